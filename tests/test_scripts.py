"""The scripts in scripts/ keep running: their smoke modes, as CI runs them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("transformers")


def run_script(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=True).stdout


def test_bench_quick(tmp_path):
    out = run_script("scripts/bench.py", "--quick", "--threads", "1", "--json", str(tmp_path / "bench.json"))
    for workload in ("plain forward", "run_with_cache", "all-heads sweep", "by-position head sweep",
                     "path patching", "greedy generation", "fresh process"):
        assert workload in out
    assert (tmp_path / "bench.json").stat().st_size > 0


def test_train_lenses_help_says_what_each_option_is():
    out = " ".join(run_script("scripts/train_lenses.py", "--help").split())
    for text in ("--steps STEPS tuned-lens optimiser steps (default: 60)",
                 "--batch BATCH corpus rows per tuned-lens step (default: 4)",
                 "--eval-rows EVAL_ROWS held-out corpus rows the lenses are scored on (default: 8)",
                 "--threads THREADS torch CPU threads (default: 2)"):
        assert text in out
