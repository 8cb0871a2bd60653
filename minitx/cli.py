"""The `minitx` command line: thin wrappers that parse arguments, call the library, print and save.

Errors a user can fix (a typo, a missing file, a bad argument) are printed in one or two lines,
without a stack of internal frames.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "weights/induction-2l"


def cmd_download(args) -> int:
    from minitx.loading import download
    path = download(args.name, revision=args.revision)
    print(f"{args.name}: in the Hugging Face cache at {path}")
    return 0


def cmd_verify(args) -> int:
    from minitx.verify import format_rows, verify
    rows = verify(args.model, tolerance=args.tolerance)
    print(format_rows(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks within tolerance {args.tolerance:g}")
    return 1 if failed else 0


def cmd_generate(args) -> int:
    import minitx
    from minitx.loading import load
    model = load(args.model)
    tokenizer = minitx.Tokenizer.default()
    tokens = tokenizer.to_tokens(args.prompt, prepend_bos=args.prepend_bos)
    out = model.generate(tokens, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(tokenizer.to_string(out[0]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minitx", description="A small GPT-2 you can see inside.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch a GPT-2 checkpoint into the Hugging Face cache ahead of time")
    p.add_argument("name", help="hub id, e.g. gpt2, gpt2-medium, distilgpt2, openai-community/gpt2")
    p.add_argument("--revision", default="main")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("verify", help="compare every activation point with HF transformers (needs transformers)")
    p.add_argument("model", help="hub id, checkpoint directory or .safetensors file")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("generate", help="continue a prompt (greedy unless --temperature > 0)")
    p.add_argument("prompt")
    p.add_argument("--model", default="gpt2")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--prepend-bos", action="store_true", help="start the prompt with <|endoftext|> (default: no BOS)")
    p.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError, PermissionError, OSError, FloatingPointError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"minitx {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minitx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
