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
