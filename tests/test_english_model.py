"""The shipped `weights/english-6l` model: held-out behaviour, HF round trip, the exact training loss,
and the training script's smoke mode."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import minitx

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "english-6l"
sys.path.insert(0, str(ROOT / "scripts"))
import eval_english  # noqa: E402
import make_corpus  # noqa: E402
import train_english  # noqa: E402


# Held-out thresholds. Measured on the full sets (scripts/eval_english.py): role 0.994, twins 0.989,
# IOI 1.0, repeats 1.0. The thresholds are role >= 0.8 for a prompt and its twin (aim 0.95)
# and IOI/repeat >= 0.9 (aim); asserted at the aims.
ROLE_TOP1, ROLE_TWINS, IOI_TOP1, REPEAT_TOP1 = 0.95, 0.95, 0.95, 0.95


@pytest.fixture(scope="module")
def model():
    return minitx.load(WEIGHTS)


@pytest.fixture(scope="module")
def metrics(model):
    torch.set_num_threads(1)
    sets = make_corpus.eval_sets(n_role=48, n_ioi=48, n_repeat=24)  # the held-out sets, smaller
    return eval_english.evaluate(model, sets)


def test_shipped_files():
    config = json.loads((WEIGHTS / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_head"], config["n_positions"], config["vocab_size"]) == \
        (6, 128, 4, 128, 50257)
    assert (WEIGHTS / "model.safetensors").stat().st_size <= 30 * 2**20
    assert (WEIGHTS / "MODEL_CARD.md").is_file()
    from safetensors import safe_open
    with safe_open(WEIGHTS / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_unused_rows_are_zero(model):
    used = torch.tensor(make_corpus.used_ids())
    norms = model.W_E.norm(dim=-1)
    assert model.W_E.dtype == torch.float32  # loading upcasts
    assert bool((norms[used] > 0).all())
    rest = torch.ones(model.cfg.d_vocab, dtype=torch.bool)
    rest[used] = False
    assert float(norms[rest].abs().max()) == 0.0


def test_subject_fixed_completion(metrics):
    fixed = metrics["fixed"]
    assert fixed["top1"] >= 0.95
    assert min(fixed["by_bos"].values()) >= 0.95 and min(fixed["by_preamble"].values()) >= 0.9
    # The issue: the target's probability rises with depth and exceeds 0.5 by the second-to-last layer,
    # i.e. in the residual stream before the last block (measured: 0.89 mean over the held-out prompts).
    probs = [fixed["lens_mean_prob"][f"{layer}_pre"] for layer in range(6)] + [fixed["lens_mean_prob"]["final"]]
    assert probs[5] > 0.5 and probs[-1] > 0.99
    assert all(later >= earlier - 0.01 for earlier, later in zip(probs, probs[1:]))  # rising with depth
    assert probs[0] < 0.01 and probs[2] < 0.1
    lens = metrics["demo_lens_p_mat"]
    assert lens[-1] > 0.9 and lens[0] < 0.1


def test_role_tracking(metrics):
    role = metrics["role"]
    assert role["top1"] >= ROLE_TOP1
    assert role["twin_both_correct"] >= ROLE_TWINS
    # No absolute-position shortcut: the same accuracy with and without <|endoftext|> and after any preamble.
    assert max(role["by_bos"].values()) - min(role["by_bos"].values()) <= 0.1
    assert max(role["by_preamble"].values()) - min(role["by_preamble"].values()) <= 0.1
    assert role["top1_is_abs_pos1_token_when_wrong_answer"] <= 0.1


def test_ioi_and_repeats(metrics):
    assert metrics["ioi"]["top1"] >= IOI_TOP1
    assert metrics["repeat"]["top1"] >= REPEAT_TOP1


def test_transformers_round_trip(model):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(WEIGHTS, torch_dtype=torch.float32).eval()
    tokens = minitx.to_tokens(["The cat sat on the", "The dog chased the fox. The fox ran from the"][1],
                              prepend_bos=True)
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)


def test_training_loss_is_the_full_vocabulary_loss(model):
    vocab = train_english.UsedVocab(make_corpus.used_ids(), model.cfg.d_vocab)
    tokens = train_english.batch_tokens(random.Random(7), 4, 64, 1.0)  # a fixed batch
    with torch.no_grad():
        exact = train_english.exact_full_vocab_loss(model, model.W_E[vocab.ids], vocab, tokens)
        logits = model(tokens)
        full = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    assert abs(exact.item() - full.item()) < 1e-4


def test_train_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "scripts/train_english.py", "--smoke", "--out", str(tmp_path / "m")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "loss" in out
    small = minitx.load(tmp_path / "m")
    assert small.cfg.d_vocab == 50257 and small(torch.tensor([[50256, 464]])).shape == (1, 2, 50257)
