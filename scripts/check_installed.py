"""Known answers from an installed minitx, by the shipped models' short names (CI runs it after a wheel install).

    python scripts/check_installed.py --not-under /path/to/source/checkout

Checks that minitx and both shipped models are read from the installed package (not from the
directory given by --not-under, the source tree), then the known answers:
- english-6l: " mat" is the top-1 next token after "The cat sat on the" (with BOS; MODEL_CARD.md);
- induction-2l: both layer-1 heads are induction heads (score >= 0.8 on [BOS] + r + r, n = 14) and
  neither layer-0 head is (< 0.2); weights/induction-2l/MODEL_CARD.md measures 0.93 / 0.99 and
  0.04 / 0.03 (docs/methods.md §5.3 for the score).
Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import minitx
from minitx.heads import induction_scores
from minitx.shipped import shipped_models, shipped_path


def _inside(path, root: Path | None) -> bool:
    return root is not None and Path(path).resolve().is_relative_to(root.resolve())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--not-under", type=Path, default=None,
                        help="fail if minitx or a shipped model is read from inside this folder (the source tree)")
    args = parser.parse_args(argv)
    checks = []

    def check(ok: bool, what: str) -> None:
        checks.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {what}")

    check(not _inside(minitx.__file__, args.not_under), f"minitx {minitx.__version__} imported from {minitx.__file__}")
    check({"english-6l", "induction-2l"} <= set(shipped_models()), f"shipped models: {', '.join(shipped_models())}")
    for name in ("english-6l", "induction-2l"):
        path = shipped_path(name)
        check(path is not None and not _inside(path, args.not_under), f"{name} found at {path}")

    english = minitx.load("english-6l")
    tokens = minitx.to_tokens("The cat sat on the", prepend_bos=True)
    with torch.no_grad():
        probs = english(tokens)[0, -1].softmax(-1)
    top = int(probs.argmax())
    check(minitx.to_string([top]) == " mat",
          f"english-6l: top-1 after 'The cat sat on the' is {minitx.to_string([top])!r} (p = {float(probs[top]):.3f})")

    induction = minitx.load("induction-2l")
    scores = induction_scores(induction, n=14, batch=8, seed=0)  # [layer, head]
    check(bool((scores[1] >= 0.8).all() and (scores[0] < 0.2).all()),
          f"induction-2l: induction scores L0 {[round(x, 3) for x in scores[0].tolist()]}, "
          f"L1 {[round(x, 3) for x in scores[1].tolist()]} "
          "(L1 heads >= 0.8, L0 heads < 0.2)")
    print(f"{sum(checks)} of {len(checks)} checks passed")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
