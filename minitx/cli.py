"""The `minitx` command line: thin wrappers that parse arguments, call the library, print and save.

Errors a user can fix (a typo, a missing file, a bad argument) are printed in one or two lines,
without a stack of internal frames.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from minitx import __version__

# The small English model trained here (weights/english-6l/MODEL_CARD.md); weights/induction-2l is the
# 2-layer induction fixture (token ids, no text). Both ship inside the package (minitx/shipped.py): a
# --model that is not a local path but names a shipped model ("english-6l" or "weights/english-6l")
# reads the packaged copy, so every command works from any directory, installed or not.
DEFAULT_MODEL = "weights/english-6l"
REPO_ROOT = Path(__file__).resolve().parent.parent  # the source checkout, when there is one (tests use it)


def cmd_download(args) -> int:
    from minitx.loading import download
    path = download(args.name, revision=args.revision)
    print(f"{args.name}: in the Hugging Face cache at {path}")
    return 0


def cmd_verify(args) -> int:
    from minitx.verify import format_rows, verify
    rows = verify(resolve_model(args.model), tolerance=args.tolerance)
    print(format_rows(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks within tolerance {args.tolerance:g}")
    return 1 if failed else 0


def cmd_generate(args) -> int:
    model, vocab = _load(args)
    tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
    # GPT-2 ends a text with <|endoftext|> (its BOS id); a model of bare ids has no end token.
    eos = model.cfg.bos_token_id if vocab.is_text and not args.ignore_eos else None
    out = model.generate(tokens, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                         eos_token_id=eos)[0]
    ends = [] if eos is None else (out[tokens.shape[1]:] == eos).nonzero()
    if len(ends):
        out = out[:tokens.shape[1] + int(ends[0])]  # the text ends there
    print(vocab.tokenizer.to_string(out) if vocab.is_text else " ".join(map(str, out.tolist())))
    return 0


# ---------------------------------------------------------------------------------------------
# Shared by the analysis commands: the model, prompts, and compact text tables.

MODEL_HELP = (f"checkpoint directory, .safetensors file or hub id (default: the small English model {DEFAULT_MODEL}, "
              "shipped inside the package and found from any directory; also english-6l, induction-2l). With GPT-2's vocabulary (50257) prompts "
              "and tokens are text; with any other (the fixture has 65 ids, BOS = 64) they are space-separated "
              "integer token ids")
BOS_HELP = ("start every prompt with BOS (default: --prepend-bos, as the fixture was trained and as "
            "TransformerLens does; <|endoftext|> for GPT-2, cfg.bos_token_id or the last id otherwise)")


def resolve_model(name: str | None) -> str:
    """--model -> what minitx.loading.load reads: a local path, a shipped model's folder, or a hub id."""
    from minitx.shipped import shipped_path
    name = DEFAULT_MODEL if name is None else name
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    shipped = shipped_path(name)
    return str(shipped) if shipped is not None else name


def _load(args):
    """-> (model, Vocab) for --model."""
    from minitx.demo import Vocab
    from minitx.loading import load
    model = load(resolve_model(args.model))
    return model, Vocab(model.cfg)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_runs(model, *tokens) -> None:
    """The model's own checks on each [batch, pos] prompt (ids in the vocabulary, at most n_positions tokens),
    from an embedding-only forward, so that they fail before any progress line."""
    for t in tokens:
        model(t, stop_at_layer=0)


def _check_pos(pos: int, n_pos: int) -> None:
    from minitx.metrics import resolve_pos
    try:
        resolve_pos(pos, 1, n_pos)
    except ValueError as error:
        raise ValueError(f"--pos: {error}") from None


def _check_index(value: int | None, size: int, what: str, plural: str) -> None:
    if value is not None and not 0 <= value < size:
        raise ValueError(f"{what} {value} is out of range; this model has {plural} 0..{size - 1}")


def _fmt(v) -> str:
    if not isinstance(v, float):
        return str(v)
    text = "nan" if v != v else f"{v:.3f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def _table(header: list[str], rows: list[list]) -> str:
    """Rows of cells -> aligned text; the first column left-aligned, the others right-aligned."""
    cells = [header] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _short(token: str, limit: int = 10) -> str:
    text = repr(token)[1:-1] if any(c in token for c in "\n\t\r") else token
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _saved(path) -> None:
    print(f"figure: {path}")


# ---------------------------------------------------------------------------------------------
# Analysis commands. Each: parse, call the library, print a compact table, save one PNG.


def cmd_attention(args) -> int:
    from minitx import heads, plots
    model, vocab = _load(args)
    cfg = model.cfg
    _check_index(args.layer, cfg.n_layer, "--layer", "layers")
    _check_index(args.head, cfg.n_head, "--head", "heads")
    tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
    patterns = heads.attention_patterns(model, tokens)[args.layer, 0]  # [head, q, k]
    labels = vocab.str_tokens(tokens[0])
    shown = [args.head] if args.head is not None else list(range(cfg.n_head))
    rows = []
    for q, label in enumerate(labels):
        row = [f"{q} {_short(label)}"]
        for h in shown:
            k = int(patterns[h, q].argmax())
            row.append(f"{k} {_short(labels[k])} {float(patterns[h, q, k]):.2f}")
        rows.append(row)
    print(f"layer {args.layer}: the key each query attends to most (position, token, weight)")
    print(_table(["query", *(f"head {args.layer}.{h}" for h in shown)], rows))
    if len(labels) > 1:
        prev = heads.previous_token_scores(model, tokens)[args.layer]
        print("mean attention to the previous token: "
              + ", ".join(f"{args.layer}.{h} {float(prev[h]):.2f}" for h in shown))
    if args.head is not None:
        fig = plots.attention_pattern(patterns[args.head], labels, f"head {args.layer}.{args.head}")
        default = f"attention-{args.layer}.{args.head}.png"
    else:
        fig, default = plots.attention_grid(patterns, labels, args.layer), f"attention-layer{args.layer}.png"
    _saved(plots.save(fig, args.out or default))
    return 0


def cmd_heads(args) -> int:
    from minitx import heads, plots
    model, vocab = _load(args)
    cfg = model.cfg
    # Every argument is checked before the progress line, so an error is the only line printed.
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch}: the number of random sequences must be at least 1")
    heads.check_max_offset(args.max_offset)
    repeated = heads.repeated_tokens(cfg.d_vocab, args.n, args.batch, args.seed, args.prepend_bos)  # checks --n
    o = int(args.prepend_bos)
    if repeated.shape[1] > cfg.n_ctx:
        raise ValueError(f"--n {args.n} gives {repeated.shape[1]} positions ({'[BOS] + ' if o else ''}r + r) but this "
                         f"model has n_positions={cfg.n_ctx}; allowed --n 1..{(cfg.n_ctx - o) // 2}")
    if args.prompt is not None:
        tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
        where = "the prompt"
    else:
        tokens = repeated
        where = f"{args.batch} sequences {'[BOS] + ' if args.prepend_bos else ''}r + r (n = {args.n}, seed {args.seed})"
    if tokens.shape[1] < 2:
        raise ValueError("the prompt needs at least 2 tokens to score heads")
    _check_runs(model, tokens)
    _progress(f"scoring heads on {where}; induction on repeated random tokens")
    offsets = heads.offset_scores(model, tokens, max_offset=min(args.max_offset, tokens.shape[1] - 1))
    best = heads.argmax_offset(offsets, min_offset=1)
    scores = {"prev-token": offsets[..., 1],
              "induction": heads.induction_scores(model, n=args.n, batch=args.batch, seed=args.seed,
                                                  prepend_bos=args.prepend_bos)}
    try:
        scores["duplicate"] = heads.duplicate_token_scores(model, tokens)
    except ValueError:  # no token repeats in a user's prompt: the score is undefined, not an error
        _progress("duplicate-token score: no token of the prompt repeats an earlier one; left out")
    scores["pos-0 (BOS)"] = heads.bos_attention_scores(model, tokens)
    rows = [[f"{l}.{h}", *(float(s[l, h]) for s in scores.values()), int(best[l, h]),
             float(offsets[l, h, int(best[l, h])])] for l in range(cfg.n_layer) for h in range(cfg.n_head)]
    print(f"head scores (mean attention mass) on {where}")
    print(_table(["head", *scores, "offset 1..k", "its score"], rows))
    _saved(plots.save(plots.layer_head_grids(scores, f"head scores on {where}"), args.out or "heads.png"))
    return 0


def _receiver(text: str, cfg):
    """'logits' | 'q:L.H' | 'k:L.H' | 'v:L.H' | 'mlp_in:L' -> path_patching's receiver."""
    if text == "logits":
        return "logits"
    kind, _, where = text.partition(":")
    try:
        if kind in ("q", "k", "v"):
            layer, head = (int(x) for x in where.split("."))
            _check_index(layer, cfg.n_layer, "receiver layer", "layers")
            _check_index(head, cfg.n_head, "receiver head", "heads")
            return (kind, layer, head)
        if kind == "mlp_in":
            _check_index(int(where), cfg.n_layer, "receiver layer", "layers")
            return ("mlp_in", int(where))
    except ValueError as error:
        if "out of range" in str(error):
            raise
    raise ValueError(f"--receiver {text!r}: use logits, q:L.H, k:L.H, v:L.H (e.g. k:1.0) or mlp_in:L")


def _pair(args, model, vocab):
    """-> clean, corrupted, answer, wrong, checked (with --pos) before any progress line, so an error stands alone."""
    import torch
    from minitx.patching import check_same_shape
    clean = vocab.tokens(args.clean, prepend_bos=args.prepend_bos, what="--clean")
    corrupted = vocab.tokens(args.corrupted, prepend_bos=args.prepend_bos, what="--corrupted")
    answer, wrong = vocab.token(args.answer, "--answer"), vocab.token(args.wrong, "--wrong")
    check_same_shape(clean, corrupted)
    _check_runs(model, clean, corrupted)
    if torch.equal(clean, corrupted):
        raise ValueError("--clean and --corrupted are the same tokens, so clean - corrupted = 0 and every score "
                         "(patched - corrupted) / (clean - corrupted) is undefined; corrupt the prompt "
                         "(e.g. swap a name)")
    if answer == wrong:
        raise ValueError(f"--answer and --wrong are the same token ({answer}), so the logit difference is always 0 and "
                         "every score is undefined; --wrong is the competing token (e.g. the corrupted answer)")
    _check_pos(args.pos, clean.shape[1])
    return clean, corrupted, answer, wrong


def cmd_patch(args) -> int:
    from minitx import metrics, patching, plots
    model, vocab = _load(args)
    cfg = model.cfg
    clean, corrupted, answer, wrong = _pair(args, model, vocab)
    by = args.by or ("pos" if args.point in patching.RESID_LIKE else "all")
    head = 0 if args.point in patching.HEAD_LIKE else None
    patching.act_index(args.point, 0 if by == "pos" else None, head)  # e.g. pattern has no per-position patch
    metric = metrics.logit_diff_metric(answer, wrong, pos=args.pos)
    _progress(f"activation patching {args.point} ({args.direction}, by {by}) over {cfg.n_layer} layers ...")
    result = patching.activation_patching(model, clean, corrupted, metric, point=args.point, by=by,
                                          direction=args.direction)
    labels = [_short(t) for t in vocab.str_tokens(clean[0])]
    S = result.scores
    print(f"logit difference {vocab.decode(answer)!r} - {vocab.decode(wrong)!r}: clean {result.clean:+.3f}, "
          f"corrupted {result.corrupted:+.3f}")
    print(f"{result.direction} {args.point}, score = (patched - corrupted) / (clean - corrupted): "
          "1 = clean behaviour, 0 = corrupted")
    title = f"{result.direction} {args.point} (1 = clean, 0 = corrupted)"
    if result.axes == ("layer", "pos"):
        print(_table(["layer", *(f"{p}:{t}" for p, t in enumerate(labels))],
                     [[str(l), *map(float, S[l])] for l in range(cfg.n_layer)]))
        fig = plots.patching_heatmap(S, labels, title)
    elif result.axes == ("layer",):
        print(_table(["layer", "score"], [[str(l), float(S[l])] for l in range(cfg.n_layer)]))
        fig = plots.patching_heatmap(S[:, None], ["all positions"], title)
    elif result.axes == ("layer", "head"):
        print(_table(["layer", *(f"head {h}" for h in range(cfg.n_head))],
                     [[str(l), *map(float, S[l])] for l in range(cfg.n_layer)]))
        fig = plots.layer_head_grid(S, title)
    else:  # [layer, pos, head] -> rows L.H
        rows = [[f"{l}.{h}", *map(float, S[l, :, h])] for l in range(cfg.n_layer) for h in range(cfg.n_head)]
        print(_table(["head", *(f"{p}:{t}" for p, t in enumerate(labels))], rows))
        fig = plots.patching_heatmap(S.permute(0, 2, 1).reshape(-1, S.shape[1]), labels, title,
                                     row_labels=[r[0] for r in rows], ylabel="head")
    _saved(plots.save(fig, args.out or "patch.png"))
    return 0


def cmd_path_patch(args) -> int:
    from minitx import metrics, path_patching, plots
    model, vocab = _load(args)
    cfg = model.cfg
    receiver = _receiver(args.receiver, cfg)
    clean, corrupted, answer, wrong = _pair(args, model, vocab)
    metric = metrics.logit_diff_metric(answer, wrong, pos=args.pos)
    _progress(f"path patching each of {cfg.n_layer * cfg.n_head} heads -> {args.receiver} ...")
    result = path_patching.path_patch_senders(model, clean, corrupted, receiver, metric)
    removed = 1 - result.score
    print(f"logit difference {vocab.decode(answer)!r} - {vocab.decode(wrong)!r}: clean {result.orig:+.3f}, "
          f"corrupted {result.new:+.3f}")
    print(f"path sender -> {args.receiver}: removed = 1 - score = share of the clean-corrupted difference "
          "lost when only this path sees the corrupted prompt (0 = no effect, 1 = as corrupted)")
    print(_table(["sender", "score", "removed", "rel. change"],
                 [[f"{l}.{h}", float(result.score[l, h]), float(removed[l, h]), float(result.relative_change[l, h])]
                  for l in range(cfg.n_layer) for h in range(cfg.n_head)]))
    fig = plots.layer_head_grid(removed, f"path patching sender -> {args.receiver}: removed (1 - score)",
                                colorbar_label="removed (1 = as corrupted)")
    _saved(plots.save(fig, args.out or "path-patch.png"))
    return 0


def cmd_lens(args) -> int:
    from minitx import lens, plots
    model, vocab = _load(args)
    tokens = vocab.tokens(args.prompt, prepend_bos=args.prepend_bos)
    target = vocab.token(args.target, "--target") if args.target is not None else None
    T = tokens.shape[1]
    if not -T <= args.pos < T:
        raise ValueError(f"--pos {args.pos} is out of range; the prompt has positions {-T}..{T - 1}")
    result = lens.logit_lens(model, tokens, targets=target)
    labels = vocab.str_tokens(tokens[0])
    p = args.pos % T
    header = ["stream", "top-1", "p(top-1)"] + ([f"p({vocab.decode(target)!r})", "rank"] if target is not None else [])
    rows = []
    for i, name in enumerate(result.labels):
        row = [name, repr(vocab.decode(int(result.top_tokens[i, 0, p, 0]))), float(result.top_probs[i, 0, p, 0])]
        if target is not None:
            row += [float(result.target_probs[i, 0, p]), int(result.target_ranks[i, 0, p])]
        rows.append(row)
    print(f"logit lens at position {p} ({labels[p]!r}); rank 0 = top-1")
    print(_table(header, rows))
    _saved(plots.save(plots.lens_table(result, labels, vocab.decode), args.out or "lens.png"))
    return 0


def cmd_demo(args) -> int:
    from minitx.demo import check_demo_args, run_demo
    from minitx.loading import load
    check_demo_args(args.n, args.batch, flags=True)  # before the first line is printed
    model = load(resolve_model(args.model))
    out = Path(args.out).resolve()
    print(f"writing the demo report into {out}", flush=True)
    result = run_demo(model, out, n=args.n, batch=args.batch, seed=args.seed, prepend_bos=args.prepend_bos,
                      log=_progress)
    for line in result["summary"]:
        print(f"- {line}")
    print(f"report: {out / 'report.md'} ({len(result['files']) - 1} figures)")
    return 0


# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and --help points the way), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(p, out_default: str | None = None) -> None:
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True, help=BOS_HELP)
    if out_default is not None:
        p.add_argument("--out", default=None, help=f"PNG to write (default: {out_default} in the current directory)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minitx", description="A small GPT-2 you can see inside.")
    parser.add_argument("--version", action="version", version=f"minitx {__version__}")
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
    p.add_argument("prompt", help="text for a GPT-2-vocabulary model, else space-separated token ids")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--ignore-eos", action="store_true", help="keep going after <|endoftext|> (default: stop there)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--prepend-bos", action="store_true", help="start the prompt with <|endoftext|> (default: no BOS)")
    p.set_defaults(func=cmd_generate)

    prompt_help = "text for a GPT-2-vocabulary model, else space-separated token ids (e.g. '5 9 2 5 9')"
    p = sub.add_parser("attention", help="one layer's attention patterns on a prompt (a table and a PNG)",
                       description="Attention patterns of one layer (or one head): for each query, the key it "
                                   "attends to most, and a heatmap with the tokens on both axes.")
    _common(p, "attention-layerL.png, or attention-L.H.png with --head")
    p.add_argument("--prompt", required=True, help=prompt_help)
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--head", type=int, default=None, help="one head (default: every head of the layer)")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("heads", help="score every head: previous-token, offset, induction, duplicate, BOS",
                       description="Head-role scores as a [layer, head] table and figure (minitx.heads). Without "
                                   "--prompt, every score is computed on repeated random tokens [BOS] + r + r; "
                                   "with it, all but induction (always on r + r) use the prompt.")
    _common(p, "heads.png")
    p.add_argument("--prompt", default=None, help=prompt_help + " (default: repeated random tokens)")
    p.add_argument("--n", type=int, default=20, help="random tokens per copy of r (default 20)")
    p.add_argument("--batch", type=int, default=8, help="random sequences averaged over (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    p.add_argument("--max-offset", type=int, default=4, help="largest offset k in the offset argmax (default 4)")
    p.set_defaults(func=cmd_heads)

    pair = dict(clean="the prompt whose behaviour is measured", corrupted="same token count, with the information "
                "removed (e.g. a name swapped)", answer="the clean answer token (text: one GPT-2 token such as "
                "' Mary', mind the space; ids: one id)", wrong="the competing token (e.g. the corrupted answer)")

    def patch_pair(p):
        for name, text in pair.items():
            p.add_argument(f"--{name}", required=True, help=text)
        p.add_argument("--pos", type=int, default=-1, help="position the logit difference is read at (default -1)")

    from minitx.patching import DIRECTIONS, HEAD_LIKE, RESID_LIKE
    p = sub.add_parser("patch", help="activation patching: which layer/position/head restores the answer",
                       description="Activation patching (minitx.patching.activation_patching) with the logit "
                                   "difference answer - wrong as metric. Score = (patched - corrupted) / "
                                   "(clean - corrupted): 1 = clean behaviour, 0 = corrupted, in both directions.")
    _common(p, "patch.png")
    patch_pair(p)
    p.add_argument("--point", default="resid_pre", choices=RESID_LIKE + HEAD_LIKE,
                   help="activation to patch (default resid_pre)")
    p.add_argument("--direction", default="denoising", choices=DIRECTIONS,
                   help="denoising: run corrupted, patch in clean (default); noising: run clean, patch in corrupted")
    p.add_argument("--by", default=None, choices=("pos", "all"),
                   help="per position, or all positions at once (default: pos for residual points, all for heads)")
    p.set_defaults(func=cmd_patch)

    p = sub.add_parser("path-patch", help="path patching: each head's effect through one receiver only",
                       description="Path patching (Wang et al. 2022, App. B; minitx.path_patching) of every head "
                                   "as sender into one receiver. score 1 = undamaged, 0 = as on the corrupted prompt; "
                                   "the table also shows removed = 1 - score.")
    _common(p, "path-patch.png")
    patch_pair(p)
    p.add_argument("--receiver", required=True, help="logits, q:L.H, k:L.H, v:L.H (e.g. k:1.0) or mlp_in:L")
    p.set_defaults(func=cmd_path_patch)

    p = sub.add_parser("lens", help="the logit lens: each layer's prediction, as a table and the classic figure",
                       description="Logit lens (minitx.lens.logit_lens): every resid_pre and the final residual "
                                   "read through ln_final and the unembedding.")
    _common(p, "lens.png")
    p.add_argument("--prompt", required=True, help=prompt_help)
    p.add_argument("--target", default=None, help="token whose probability and rank to show (text: one GPT-2 "
                                                  "token such as ' mat'; ids: one id)")
    p.add_argument("--pos", type=int, default=-1, help="position the table shows (default -1); the figure shows all")
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("demo", help="a first tour, offline: report.md and figures from the library's own numbers",
                       description="Writes report.md and PNGs into --out and prints a summary. With the default "
                                   f"English model ({DEFAULT_MODEL}) or any GPT-2-vocabulary model (--model gpt2): "
                                   "the logit lens on 'The cat sat on the', head roles, attention under a role swap, "
                                   "and path patching testing 'head L.H carries the subject-object relation'. With "
                                   "the induction fixture (--model weights/induction-2l): head roles, noising and "
                                   "path patching of the layer-0 head into the induction head, and the logit lens.")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--prepend-bos", action=argparse.BooleanOptionalAction, default=True, help=BOS_HELP)
    p.add_argument("--out", default="minitx-demo", help="folder for report.md and the PNGs (default ./minitx-demo)")
    p.add_argument("--n", type=int, default=12, help="random tokens per copy, fixture tour (default 12)")
    p.add_argument("--batch", type=int, default=8, help="random sequences, fixture tour (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed): return it, for in-process calls
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        with warnings.catch_warnings():  # a library warning is one line too, not a file:line plus a line of source
            warnings.showwarning = lambda message, *_, **__: print(f"minitx {args.command}: warning: {message}",
                                                                     file=sys.stderr)
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
