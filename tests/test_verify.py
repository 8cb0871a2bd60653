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
    assert main(["verify", str(tmp_path), "--tolerance", "1e-30"]) == 1
    assert " NO" in capsys.readouterr().out


def test_verify_a_float16_checkpoint(tmp_path, capsys):
    """Both libraries read the float16 file into float32 (transformers would otherwise keep float16)."""
    random_model(6).half().save_pretrained(tmp_path)
    assert main(["verify", str(tmp_path)]) == 0, capsys.readouterr().out


def test_verify_a_gpt2_vocabulary_with_few_positions(tmp_path, capsys):
    """The English prompts need 14 positions: with 16 only 2 tokens are generated, with 12 random ids are used."""
    for n_positions in (16, 12):
        random_model(7, vocab_size=50257, n_positions=n_positions, n_embd=32).save_pretrained(tmp_path / str(n_positions))
        assert main(["verify", str(tmp_path / str(n_positions))]) == 0
        assert f"greedy tokens ({ {16: 2, 12: 6}[n_positions]} new" in capsys.readouterr().out


def test_verify_a_file_without_config_beside_it(tmp_path, capsys):
    random_model(5).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()  # minitx reads the config from the file's metadata; transformers cannot
    assert main(["verify", str(tmp_path / "model.safetensors")]) == 2
    assert "transformers needs the model's config.json beside the weights" in capsys.readouterr().err


def test_import_does_not_pull_in_transformers():
    code = "import sys, minitx; minitx.Transformer; assert 'transformers' not in sys.modules, 'transformers imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_verify_without_transformers_is_an_import_error_and_one_line(tmp_path, capsys, monkeypatch):
    """A library function never exits the caller's interpreter; the command line says what to install."""
    from minitx.verify import verify

    random_model(5).save_pretrained(tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ImportError, match="minitx verify needs transformers as the reference: pip install transformers"):
        verify(str(tmp_path))
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install transformers" in err[0] and "Traceback" not in err[0]


def test_verify_prints_no_loading_bar(tmp_path, capfd):
    random_model(5).save_pretrained(tmp_path)
    assert main(["verify", str(tmp_path)]) == 0
    assert "Loading weights" not in capfd.readouterr().err
