"""Known answers on the trained induction fixture, weights/induction-2l (docs/methods.md §9.3).

The fixture is a 2-layer, 2-head GPT-2 trained by scripts/train_induction.py on [BOS] + A + A + noise
(MODEL_CARD.md beside the weights). Preconditions (§9.3 items 1-3) say it is a valid fixture; the rest
are the answers each method must give on it. Clean = [BOS] + A + A + tail; corrupted replaces the
first copy by a disjoint block A'. Metric: mean log-prob of the correct next token at the second-copy
positions L+1 .. 2L-1 (per prompt, [batch]). Normalised scores: 1 = clean, 0 = corrupted.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import minitx
from minitx import dla, heads, lens
from minitx.patching import activation_patching
from minitx.path_patching import path_patch

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "weights" / "induction-2l"
_spec = importlib.util.spec_from_file_location("train_induction", ROOT / "scripts" / "train_induction.py")
train_induction = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_induction)

N_PROMPTS, DATA_SEED = 64, 2024


@pytest.fixture(scope="module")
def model():
    return minitx.load(FIXTURE)


@pytest.fixture(scope="module")
def task():
    """(clean, corrupted, L [batch], metric): L ~ U{8..20} per prompt, a held-out seed."""
    clean, corrupted, lengths = train_induction.make_batch(N_PROMPTS, torch.Generator().manual_seed(DATA_SEED))

    def metric(logits):
        return train_induction.second_copy_logprob(logits, clean, lengths)

    return clean, corrupted, lengths, metric


@pytest.fixture(scope="module")
def baselines(model, task):
    clean, corrupted, _, metric = task
    with torch.no_grad():
        return float(metric(model(clean)).mean()), float(metric(model(corrupted)).mean())


@pytest.fixture(scope="module")
def head_noising(model, task):
    clean, corrupted, _, metric = task
    return activation_patching(model, clean, corrupted, metric, "z", by="all", direction="noising")


@pytest.fixture(scope="module")
def main_l0_head(head_noising):
    """h0: the layer-0 head whose noising damages the metric most (§9.3 item 3)."""
    return int(head_noising.scores[0].argmin())


def normalised(value, baselines):
    clean, corrupted = baselines
    return (value - corrupted) / (clean - corrupted)


# -- the checkpoint itself -------------------------------------------------------------------------------
def test_checkpoint_is_an_attention_only_gpt2(model):
    cfg = model.cfg
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.n_positions) == (2, 2, 64, 65, 48)
    assert cfg.bos_token_id == 64
    assert not cfg.tie_word_embeddings  # see MODEL_CARD.md: the tied variant was measured and not chosen
    for block in model.blocks:  # MLPs are exactly zero, ln2 the identity: attention-only in effect
        assert all(bool((p == 0).all()) for p in block.mlp.parameters())
        assert bool((block.ln2.w == 1).all()) and bool((block.ln2.b == 0).all())
    config = json.loads((FIXTURE / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_inner"] is None


def test_checkpoint_loads_in_transformers_with_the_same_logits(model, task):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(FIXTURE, attn_implementation="eager").eval()
    clean = task[0][:8]
    with torch.no_grad():
        assert_close(hf(clean).logits, model(clean), atol=1e-4, rtol=1e-4)


# -- preconditions (§9.3 items 1-3) ---------------------------------------------------------------------
def test_precondition_second_copy_is_predicted(baselines):
    clean, corrupted = baselines
    assert clean >= -0.5  # measured -0.039; uniform would be -log 64 = -4.16
    assert corrupted < -3.0  # measured -4.26


def test_precondition_layer1_has_an_induction_head(model):
    scores = torch.stack([heads.induction_scores(model, n=n, batch=32, seed=n) for n in (8, 14, 20)]).mean(0)
    assert float(scores[1].max()) >= 0.8  # measured 0.83, 0.89 (mean over n = 8, 14, 20)
    assert float(scores[0].max()) < 0.3  # layer 0 cannot do induction alone


def test_precondition_main_l0_head_looks_one_back(model, task, main_l0_head):
    offsets = heads.offset_scores(model, task[0], max_offset=4)  # [layer, head, offset]
    assert int(heads.argmax_offset(offsets, min_offset=1)[0, main_l0_head]) == 1
    # h0 is THE previous-token head: its largest offset overall (d >= 0) is 1 too, and no other
    # layer-0 head looks one back more. (Both layer-0 heads are necessary, see the next tests, so
    # "largest noising damage" alone is a near tie: 0.006 vs 0.014 on these prompts.)
    assert int(heads.argmax_offset(offsets)[0, main_l0_head]) == 1
    assert int(offsets[0, :, 1].argmax()) == main_l0_head


# -- activation patching (§9.3 items 4 and 6) ------------------------------------------------------------
def test_noising_main_l0_head_damages_and_denoising_it_alone_does_not_recover(model, task, head_noising, main_l0_head):
    clean, corrupted, _, metric = task
    assert float(head_noising.scores[0, main_l0_head]) <= 0.5  # measured 0.006
    denoising = activation_patching(model, clean, corrupted, metric, "z", by="all")
    assert float(denoising.scores[0, main_l0_head]) <= 0.1  # measured -1.19: an AND gate with the values (§9.2)
    assert float(head_noising.scores[1].min()) <= 0.5  # measured 0.35, 0.34: both induction heads matter


def test_denoising_resid_pre1_first_copy_recovers_second_copy_does_not(model, task, baselines):
    clean, corrupted, lengths, metric = task
    q = torch.arange(clean.shape[1])
    first = (q >= 1) & (q <= lengths[:, None])  # [batch, pos]
    second = (q > lengths[:, None]) & (q <= 2 * lengths[:, None])
    _, cache = model.run_with_cache(clean, names_filter=["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"])

    def denoise(name, where):
        def hook(x, _):
            return torch.where(where[..., None], cache[name], x)
        with torch.no_grad():
            return normalised(float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])).mean()), baselines)

    assert denoise("blocks.1.hook_resid_pre", first) >= 0.9  # measured 0.938
    assert denoise("blocks.1.hook_resid_pre", second) <= 0.1  # measured 0.063
    assert denoise("blocks.1.hook_resid_post", second) == pytest.approx(1.0, abs=1e-5)  # an identity


# -- path patching (§9.3 item 5): noising convention, 1 = undamaged ----------------------------------------
def test_path_patching_main_l0_head_acts_through_layer1_keys(model, task, main_l0_head):
    clean, corrupted, _, metric = task
    sender = (0, main_l0_head)
    keys = [float(path_patch(model, clean, corrupted, sender, ("k", 1, h), metric).scores) for h in range(2)]
    assert min(keys) <= 0.5  # measured 0.34 (best receiver), 0.36
    for receivers in ([("q", 1, h) for h in range(2)], [("v", 1, h) for h in range(2)], "logits"):
        assert float(path_patch(model, clean, corrupted, sender, receivers, metric).scores) >= 0.95  # measured 1.00


def test_the_other_l0_head_acts_through_layer1_values(model, task, main_l0_head, head_noising):
    """Layer 0's other head attends to the current token (off_0 largest); it is necessary too
    (noising 0.01), but only through the values that layer 1 copies, not through keys."""
    clean, corrupted, _, metric = task
    other = 1 - main_l0_head
    assert int(heads.argmax_offset(heads.offset_scores(model, clean, max_offset=4))[0, other]) == 0
    assert float(head_noising.scores[0, other]) <= 0.5
    values = [("v", 1, h) for h in range(2)]
    assert float(path_patch(model, clean, corrupted, (0, other), values, metric).scores) <= 0.5  # measured 0.01
    for receivers in ([("k", 1, h) for h in range(2)], [("q", 1, h) for h in range(2)], "logits"):
        assert float(path_patch(model, clean, corrupted, (0, other), receivers, metric).scores) >= 0.95


# -- direct logit attribution (§9.3 item 7) and the logit lens (item 8) ------------------------------------
def test_dla_sums_to_the_logit_and_layer1_carries_it(model, task):
    clean, _, lengths, _ = task
    for i in range(1, 8):  # second-copy positions L + i; L >= 8 for every prompt
        pos = lengths + i
        result = dla.direct_logit_attribution(model, clean, clean[torch.arange(len(clean)), pos + 1], pos=pos)
        assert_close(result.total, result.target, atol=1e-4, rtol=1e-4)
        logit = result.target.mean()
        assert float(result.heads[1].sum(0).mean()) >= 0.9 * float(logit)  # measured 99.7% of 10.3
        assert abs(float(result.heads[0].sum(0).mean())) <= 0.02 * float(logit)  # measured 0.1%


def test_logit_lens_correct_token_only_after_layer1(model, task):
    clean, _, lengths, _ = task
    result = lens.logit_lens(model, clean, targets="next", positions=list(range(clean.shape[1] - 1)))
    mask = train_induction.second_copy_mask(lengths)[:, :-1]  # [batch, pos]
    ranks = [float(r[mask].float().median()) for r in result.target_ranks]  # "0_pre", "1_pre", "final"
    assert result.labels == ["0_pre", "1_pre", "final"]
    assert ranks[0] >= 10 and ranks[1] >= 10 and ranks[2] == 0  # measured 31, 28, 0 (of 65)


# -- the training script's CI mode -------------------------------------------------------------------------
def test_training_script_smoke(tmp_path):
    metrics = train_induction.main(["--smoke", "--out", str(tmp_path)])  # conftest restores the thread count
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    trained = minitx.load(tmp_path)
    assert trained.cfg == train_induction.model_config()
    assert all(bool((p == 0).all()) for block in trained.blocks for p in block.mlp.parameters())
    assert metrics["steps"] == 20 and set(metrics) >= {"second_copy_logprob", "induction_L1", "preconditions_hold"}
