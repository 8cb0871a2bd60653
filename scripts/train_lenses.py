"""Train the shipped tuned lens and fit the shipped Jacobian lens for weights/english-6l, score them, write the card.

The data is the model's own corpus (scripts/make_corpus.py, final mixture), regenerated from seeds, so nothing
large is committed: training rows from --seed, Jacobian prompts from --seed + 1, held-out rows from --seed + 2.
The tuned lens uses tuned-lens 0.2.0's recipe (minitx.tuned_lens.train_tuned_lens defaults); the Jacobian lens
the reference estimator (minitx.jacobian_lens.fit_jacobian_lens defaults). Then every lens is scored on the
held-out rows (KL to the final distribution and top-1 agreement, per layer, full vocabulary) and on the seed's
prompt "The cat sat on the" -> " mat"; the numbers go to LENS_CARD.md, scores.json and comparison.png.

    python scripts/train_lenses.py                      # about 10 CPU minutes on 2 shared cores
    python scripts/train_lenses.py --steps 2 --jacobian-prompts 1 --eval-rows 1 --out /tmp/lenses   # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing
sys.path.insert(0, str(ROOT / "scripts"))
import make_corpus  # noqa: E402
import minitx  # noqa: E402
from minitx import lens as LENS  # noqa: E402
from minitx import plots  # noqa: E402
from minitx.jacobian_lens import JacobianLens, fit_jacobian_lens  # noqa: E402
from minitx.tokenizer import Tokenizer  # noqa: E402
from minitx.tuned_lens import TunedLens, train_tuned_lens  # noqa: E402

PROMPT, TARGET = "The cat sat on the", " mat"


def corpus_rows(seed: int, n: int, length: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [make_corpus.row_tokens(rng, length, progress=1.0) for _ in range(n)]


def training_batches(seed: int, steps: int, batch: int, length: int):
    """Streams `steps` batches [batch, length] of corpus rows: one in memory at a time."""
    rng = random.Random(seed)
    for _ in range(steps):
        yield torch.tensor([make_corpus.row_tokens(rng, length, progress=1.0) for _ in range(batch)])


def trajectories(model, lenses: dict, prepend_bos: bool = True) -> dict:
    tok = Tokenizer.default()
    tokens, target = tok.to_tokens(PROMPT, prepend_bos=prepend_bos), tok.to_single_token(TARGET)
    return {name: LENS.read_lens(lens, tokens, targets=target, positions=-1) for name, lens in lenses.items()}


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def table(scores: dict, key: str, fmt: str) -> list[str]:
    labels = scores["logit"]["labels"]
    lines = ["| stream | " + " | ".join(scores) + " |", "|---" * (len(scores) + 1) + "|"]
    for label in labels:
        cells = []
        for s in scores.values():
            cells.append(format(s[key][s["labels"].index(label)], fmt) if label in s["labels"] else "n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def card(args, scores: dict, paths: dict, runs: dict, mat: dict) -> str:
    tuned_ok = all(t < l for t, l in zip(scores["tuned"]["kl"][:-1], scores["logit"]["kl"][:-1]))
    jacobian_vs_logit = [j < l for j, l in zip(scores["jacobian"]["kl"][:-1], scores["logit"]["kl"][1:-1])]
    jacobian_better = sum(jacobian_vs_logit) * 2 > len(jacobian_vs_logit)
    jacobian_all = all(jacobian_vs_logit) if jacobian_better else not any(jacobian_vs_logit)
    lines = [
        "# Lenses for weights/english-6l\n",
        f"Made by `{runs.get('command', 'python scripts/train_lenses.py')}` "
        f"(torch {torch.__version__}, CPU). Both lenses read the model through its own final layer norm and "
        "unembedding (`minitx.lens.Lens`); load them with `TunedLens.load(model, 'weights/english-6l/lenses/tuned')` "
        "and `JacobianLens.load(model, 'weights/english-6l/lenses/jacobian.pt')`, or "
        "`minitx lens --lens tuned|jacobian`.\n",
        "| file | what | size |", "|---|---|---|",
        f"| `tuned/` (config.json + params.pt) | tuned-lens 0.2.0 folder format, float32 | "
        f"{size(paths['tuned']):,} bytes |",
        f"| `jacobian.pt` | Jacobian-lens reference artifact, float16 | {size(paths['jacobian']):,} bytes |",
        "| `scores.json`, `comparison.png` | the numbers and figure below | |\n",
        "## How they were made\n",
        f"- **Tuned lens** (`train_tuned_lens`, the published recipe: SGD, Nesterov momentum 0.9, lr 1.0 x (1 - 0.9), "
        f"weight decay 1e-3, linear decay to 0, gradient norm clipped to 1): {args.steps} steps of {args.batch} rows x "
        f"{args.length} tokens = {runs['tuned_tokens']:,} tokens of the model's corpus (`make_corpus.row_tokens`, "
        f"seed {args.seed}), {runs['tuned_s']:.0f} s. (tuned-lens's published GPT-2 lenses used 65M tokens; this "
        "model is small and its corpus narrow.)",
        f"- **Jacobian lens** (`fit_jacobian_lens`, the reference estimator, skip_first_positions=16, dim_batch="
        f"{args.dim_batch}): {runs['jacobian_prompts']} corpus rows of {args.length} tokens (seed {args.seed + 1}), "
        f"block outputs 0..4, {runs['jacobian_s']:.0f} s.",
        f"- **Scores**: {args.eval_rows} held-out corpus rows (seed {args.seed + 2}) = "
        f"{scores['logit']['n_positions']:,} positions, full 50,257-token vocabulary. The Jacobian lens has no "
        "matrix for the embedding (0_pre): the reference fits block outputs only.\n",
        "## KL(p_final || p_layer), nats, mean over positions\n", *table(scores, "kl", ".3f"), "",
        "## Top-1 agreement with the model's own prediction\n", *table(scores, "top1", ".3f"), "",
        f"The tuned lens has lower KL than the logit lens at every layer: **{'yes' if tuned_ok else 'NO'}**. "
        f"The Jacobian lens has {'lower' if jacobian_better else 'higher'} KL than the logit lens at "
        f"{'every' if jacobian_all else 'some'} layer it reads (1_pre..5_pre) on this model and data; its fit "
        f"used {runs['jacobian_prompts']} prompts, where the reference reports that about 100 prompts of 128 tokens "
        "are usable.\n",
        f"## p({TARGET!r}) after {PROMPT!r} (with BOS), by lens\n",
        "| stream | " + " | ".join(mat) + " |", "|---" * (len(mat) + 1) + "|"]
    for label in mat["logit"].labels:
        cells = [f"{float(r.target_probs[r.labels.index(label), 0, 0]):.3f}" if label in r.labels else "n/a"
                 for r in mat.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![lenses compared](comparison.png)", ""]
    return "\n".join(lines)


def make_lenses(model, args, out: Path) -> dict:
    """Trains and fits both lenses, saves them in `out` -> how long each took and on how much data."""
    start = time.perf_counter()
    tuned = train_tuned_lens(model, training_batches(args.seed, args.steps, args.batch, args.length), steps=args.steps)
    tuned.base_model_name_or_path = "minitx/english-6l"
    tuned.save(out / "tuned")
    runs = dict(tuned_s=time.perf_counter() - start, tuned_tokens=tuned.history[-1][1])
    start = time.perf_counter()
    jacobian = fit_jacobian_lens(model, corpus_rows(args.seed + 1, args.jacobian_prompts, args.length),
                                 dim_batch=args.dim_batch, metadata={"corpus": f"make_corpus seed {args.seed + 1}"})
    jacobian.save(out / "jacobian.pt")
    return dict(runs, jacobian_s=time.perf_counter() - start, jacobian_prompts=jacobian.n_prompts,
                command=" ".join(["python scripts/train_lenses.py", *sys.argv[1:]]).strip())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "weights" / "english-6l"), help="the model folder")
    parser.add_argument("--out", type=Path, default=None, help="folder for the lenses and the card; None: the "
                        "model folder's lenses/")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed: training rows from it, Jacobian prompts "
                        "from seed + 1, held-out rows from seed + 2")
    parser.add_argument("--steps", type=int, default=60, help="tuned-lens optimiser steps")
    parser.add_argument("--batch", type=int, default=4, help="corpus rows per tuned-lens step")
    parser.add_argument("--length", type=int, default=128, help="tokens per corpus row (training, Jacobian, scoring)")
    parser.add_argument("--jacobian-prompts", type=int, default=16, help="corpus rows the Jacobian lens averages over")
    parser.add_argument("--dim-batch", type=int, default=32, help="output dimensions per backward pass of the "
                        "Jacobian fit (memory against speed; the result is the same)")
    parser.add_argument("--eval-rows", type=int, default=8, help="held-out corpus rows the lenses are scored on")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--score-only", action="store_true", help="rescore the saved lenses, rewrite card and figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = minitx.load(args.model).eval().requires_grad_(False)
    out = args.out or Path(args.model) / "lenses"
    out.mkdir(parents=True, exist_ok=True)
    if args.score_only:  # the lenses already saved, with the record of how they were made
        runs = json.loads((out / "scores.json").read_text())["runs"]
    else:
        runs = make_lenses(model, args, out)
    paths = {"tuned": out / "tuned", "jacobian": out / "jacobian.pt"}

    # Score what was saved (float16 J included), one held-out row at a time.
    lenses = {"logit": LENS.LogitLens(model), "tuned": TunedLens.load(model, out / "tuned"),
              "jacobian": JacobianLens.load(model, out / "jacobian.pt")}
    rows = corpus_rows(args.seed + 2, args.eval_rows, args.length)
    scores = LENS.lens_scores(lenses, (torch.tensor([row]) for row in rows))
    mat = trajectories(model, lenses)
    (out / "scores.json").write_text(json.dumps({"scores": scores, "runs": runs}, indent=1) + "\n")
    fig = plots.lens_comparison(scores, mat, repr(TARGET), title=f"english-6l: logit, tuned and Jacobian lenses "
                                f"({args.eval_rows} held-out corpus rows; right: {PROMPT!r})")
    plots.save(fig, out / "comparison.png")
    (out / "LENS_CARD.md").write_text(card(args, scores, paths, runs, mat))
    for name, s in scores.items():
        print(f"{name:9s} KL " + " ".join(f"{k:.3f}" for k in s["kl"])
              + "  top-1 " + " ".join(f"{t:.2f}" for t in s["top1"]))
    print(f"wrote {out}")
    return scores


if __name__ == "__main__":
    main()
