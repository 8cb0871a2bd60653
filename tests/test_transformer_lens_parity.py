"""Parity with TransformerLens 4.x on the same weights (docs/methods.md §1.6 item 6, §5.6 item 2).

TransformerLens is an optional peer, never a dependency: these tests skip unless it imports, e.g.
    python3 -m venv --system-site-packages .venv-tl && .venv-tl/bin/pip install transformer_lens==4.3.0
    .venv-tl/bin/python -m pytest tests/test_transformer_lens_parity.py
TransformerLens runs its own code end to end: its bridge wraps a transformers GPT-2 loaded from the
checkpoint minitx saved (with GPT-2's tokenizer files beside it), its get_act_patch_* functions run one
hooked forward per patch, its head detector tokenizes the text itself (prepending BOS), and its
direct-path patching, logit lens and attribution patching run their own hooks and autograd.
"""


import pytest
import torch
from torch.testing import assert_close

import minitx
from minitx import attribution, heads, lens, metrics, patching, path_patching
from tests.conftest import random_model
from tests.peers import tl_bridge

tl_patching = pytest.importorskip("transformer_lens.patching")
tl_heads = pytest.importorskip("transformer_lens.head_detector")
pytestmark = pytest.mark.peers  # CI runs these in .venv-peers: pytest -m peers

PROMPTS = ["When Mary and John went to the store, John gave a drink to",
           "When Tom and Anna went to the park, Anna gave a ball to"]
CORRUPTED = ["When Mary and John went to the store, Mary gave a drink to",
             "When Tom and Anna went to the park, Tom gave a ball to"]
TEXT = "When Mary and John went to the store, John gave a drink to Mary. When Mary and John went"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ours = random_model(vocab_size=50257, n_layer=2, n_head=4, n_embd=64, n_positions=64)
    return ours, tl_bridge(ours, tmp_path_factory.mktemp("checkpoint"))


@pytest.fixture(scope="module")
def pair():
    tok = minitx.Tokenizer.default()
    clean, corrupted = tok.to_tokens(PROMPTS, prepend_bos=True), tok.to_tokens(CORRUPTED, prepend_bos=True)
    assert clean.shape == corrupted.shape
    answer = torch.tensor([tok.to_single_token(" Mary"), tok.to_single_token(" Tom")])
    wrong = torch.tensor([tok.to_single_token(" John"), tok.to_single_token(" Anna")])
    return clean, corrupted, metrics.logit_diff_metric(answer, wrong)


def test_same_tokens_and_logits(models, pair):
    ours, theirs = models
    clean, _, _ = pair
    assert torch.equal(theirs.to_tokens(PROMPTS[0]), clean[:1])
    assert_close(theirs(clean), ours(clean), atol=1e-4, rtol=0)


@pytest.mark.parametrize("point, by, tl_name", [
    ("resid_pre", "pos", "get_act_patch_resid_pre"),
    ("attn_out", "pos", "get_act_patch_attn_out"), ("mlp_out", "pos", "get_act_patch_mlp_out"),
    ("z", "all", "get_act_patch_attn_head_out_all_pos"), ("z", "pos", "get_act_patch_attn_head_out_by_pos"),
    ("q", "all", "get_act_patch_attn_head_q_all_pos"), ("k", "pos", "get_act_patch_attn_head_k_by_pos"),
    ("v", "all", "get_act_patch_attn_head_v_all_pos"), ("pattern", "all", "get_act_patch_attn_head_pattern_all_pos"),
])
def test_activation_patching_equals_get_act_patch(models, pair, point, by, tl_name):
    """Same axes, same order, same raw metric (denoising: corrupted run, clean activations)."""
    ours, theirs = models
    clean, corrupted, metric = pair
    _, clean_cache = theirs.run_with_cache(clean)
    expected = getattr(tl_patching, tl_name)(theirs, corrupted, clean_cache, lambda logits: metric(logits).mean())
    result = patching.activation_patching(ours, clean, corrupted, metric, point, by=by)
    assert result.raw.shape == expected.shape
    assert_close(result.raw, expected.to(result.raw.dtype), atol=1e-4, rtol=0)
    assert float((expected - result.corrupted).abs().max()) > 1e-3  # the patches do something


def test_transformer_lens_resid_mid_patch_reaches_only_the_mlp(models, pair):
    """A difference found here: TransformerLens 4.3's bridge applies a patch of hook_resid_mid to the MLP's
    input only; the residual stream that goes on to resid_post keeps the corrupted value. Its grid equals
    minitx patching hook_mlp_in, and patching the last layer's resid_mid at the last position does not
    give the clean logits there, as it must by definition (resid_post = resid_mid + MLP(resid_mid))."""
    ours, theirs = models
    clean, corrupted, metric = pair
    _, clean_cache = theirs.run_with_cache(clean)
    tl_grid = tl_patching.get_act_patch_resid_mid(theirs, corrupted, clean_cache, lambda logits: metric(logits).mean())
    ours_grid = patching.activation_patching(ours, clean, corrupted, metric, "resid_mid", by="pos")
    last = (ours.cfg.n_layer - 1, clean.shape[1] - 1)
    assert ours_grid.raw[last] == pytest.approx(ours_grid.clean, abs=1e-5)
    if abs(float(tl_grid[last]) - ours_grid.clean) < 1e-4:
        pytest.fail("TransformerLens now patches resid_mid as the residual stream: move resid_mid to the parity table")
    _, resid_mid = ours.run_with_cache(clean, names_filter=lambda name: name.endswith("hook_resid_mid"))
    mlp_in_grid = torch.empty_like(ours_grid.raw)
    for layer, pos in torch.cartesian_prod(*map(torch.arange, mlp_in_grid.shape)).tolist():
        def restore(x, hook, layer=layer, pos=pos):
            x = x.clone()
            x[:, pos] = resid_mid[f"blocks.{layer}.hook_resid_mid"][:, pos]
            return x
        patched = ours.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.hook_mlp_in", restore)])
        mlp_in_grid[layer, pos] = metric(patched).mean()
    assert_close(tl_grid.to(mlp_in_grid.dtype), mlp_in_grid, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["previous_token_head", "duplicate_token_head", "induction_head"])
@pytest.mark.parametrize("options", [dict(), dict(exclude_bos=True), dict(exclude_current_token=True),
                                     dict(error_measure="abs"), dict(error_measure="abs", exclude_bos=True)])
def test_detect_head_equals_transformer_lens(models, name, options):
    ours, theirs = models
    expected = tl_heads.detect_head(theirs, TEXT, name, **options)
    tokens = minitx.Tokenizer.default().to_tokens(TEXT, prepend_bos=True)  # TL prepends BOS itself
    assert_close(heads.detect_head(ours, tokens, name, **options), expected, atol=1e-6, rtol=0)


def test_direct_path_patch_equals_get_act_patch_direct_path(models, pair):
    """docs/methods.md §2.3: one sender's clean-minus-corrupted write added to one receiver head's q/k/v input copy."""
    ours, theirs = models
    clean, corrupted, metric = pair
    _, clean_cache = theirs.run_with_cache(clean)
    _, corrupted_cache = theirs.run_with_cache(corrupted)
    m_clean, m_corrupted = float(metric(ours(clean)).mean()), float(metric(ours(corrupted)).mean())
    for sender, kind in [((0, 2), "k"), ((0, 0), "q"), ((0, 3), "v")]:
        raw = tl_patching.get_act_patch_direct_path(theirs, corrupted, clean_cache, corrupted_cache,
                                                    lambda logits: metric(logits).mean(), *sender, kind, verbose=False)
        expected = (raw[1] - m_corrupted) / (m_clean - m_corrupted)  # [head] of layer 1, normalised
        got = torch.stack([path_patching.direct_path_patch(ours, clean, corrupted, sender, (kind, 1, h), metric).scores
                           for h in range(ours.cfg.n_head)])
        assert_close(got, expected.to(got.dtype), atol=1e-4, rtol=0)


def test_logit_lens_equals_transformer_lens(models, pair):
    from transformer_lens.tools.analysis.logit_lens import logit_lens as tl_logit_lens
    ours, theirs = models
    clean, _, _ = pair
    expected = tl_logit_lens(theirs, clean, positions=None)  # every position, each layer's own LN statistics
    result = lens.logit_lens(ours, clean)
    assert len(result.labels) == len(expected.labels)
    assert_close(result.logits, expected.values.to(result.logits.dtype), atol=1e-4, rtol=0)


def test_attribution_patching_equals_transformer_lens(models, pair):
    """Node AtP, denoising (gradient on the corrupted run). TransformerLens scores each pair alone and
    averages; minitx differentiates the batch mean: the same number. The answer is one id for every
    prompt because TransformerLens hands the metric one prompt's logits without saying which."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch
    ours, theirs = models
    clean, corrupted, _ = pair
    tok = minitx.Tokenizer.default()
    metric = metrics.logit_diff_metric(tok.to_single_token(" Mary"), tok.to_single_token(" John"))
    expected = attribution_patch(theirs, clean, corrupted, lambda logits: metric(logits).mean()).node_scores
    result = attribution.attribution_patching(ours, clean, corrupted, metric, points=("z", "mlp_out"))
    heads_by_pos = torch.zeros_like(result.by_pos["z"])  # [layer, pos, head]
    mlp_by_pos = torch.zeros_like(result.by_pos["mlp_out"])  # [layer, pos]
    for node, score in expected.items():
        if node.kind == "attn_head_out":
            heads_by_pos[node.layer, node.position, node.head] = score
        elif node.kind == "mlp_out":
            mlp_by_pos[node.layer, node.position] = score
    assert_close(result.by_pos["z"], heads_by_pos, atol=1e-5, rtol=1e-4)
    assert_close(result.by_pos["mlp_out"], mlp_by_pos, atol=1e-5, rtol=1e-4)
    assert float(heads_by_pos.abs().max()) > 1e-3


def test_hook_normalized_is_after_the_gain_and_bias(models, pair):
    """README, "The activation points": minitx's ln*.hook_normalized is the layer norm's output, after its gain
    and bias; TransformerLens 4.3's is before them ((x - mean) / scale). hook_scale is the same divisor in both."""
    ours, theirs = models
    clean, _, _ = pair
    names = ["blocks.1.ln1.hook_normalized", "blocks.0.ln2.hook_normalized", "ln_final.hook_normalized",
             "blocks.1.ln1.hook_scale"]
    _, mine = ours.run_with_cache(clean, names_filter=names)
    _, tl = theirs.run_with_cache(clean, names_filter=lambda name: name in names)
    assert_close(tl["blocks.1.ln1.hook_scale"], mine["blocks.1.ln1.hook_scale"], atol=1e-5, rtol=1e-5)
    for name, ln in (("blocks.1.ln1.hook_normalized", ours.blocks[1].ln1), ("blocks.0.ln2.hook_normalized",
                     ours.blocks[0].ln2), ("ln_final.hook_normalized", ours.ln_final)):
        assert_close(tl[name] * ln.w + ln.b, mine[name], atol=1e-5, rtol=1e-5)
        assert (tl[name] - mine[name]).abs().max() > 1e-2  # the model's gains and biases are not 1 and 0
