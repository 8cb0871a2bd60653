"""`minitx verify` reports parity point by point, and fails loudly when a checkpoint is off."""

import subprocess
import sys

import pytest

from minitx.cli import main
from tests.conftest import random_model

pytest.importorskip("transformers")


def test_verify_passes_on_a_faithful_checkpoint(tmp_path, capsys):
    random_model(5, n_layer=3, n_head=3, n_embd=48, vocab_size=120).save_pretrained(tmp_path)
    assert main(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "blocks.2.attn.hook_pattern" in out and "greedy tokens" in out and " NO" not in out


def test_verify_fails_past_tolerance(tmp_path, capsys):
    random_model(5).save_pretrained(tmp_path)
    # A tolerance no float computation meets makes every inexact row fail: the exit code says so.
    assert main(["verify", str(tmp_path), "--tolerance", "0"]) == 1
    assert " NO" in capsys.readouterr().out


def test_import_does_not_pull_in_transformers():
    code = "import sys, minitx; minitx.Transformer; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
