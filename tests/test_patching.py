"""Activation patching and metrics: docs/methods.md §1.6 identities on small random models."""

import itertools

import pytest
import torch
from torch.testing import assert_close

from minitx import metrics as M
from tests.conftest import random_model
from minitx import patching as P

B, T = 2, 5
CLEAN = torch.tensor([[11, 22, 33, 44, 55], [66, 77, 88, 99, 110]])
CORRUPTED = CLEAN.clone()
CORRUPTED[:, 2] = torch.tensor([120, 130])  # first differing position: 2
CORRUPTED[1, 3] = 140  # row 1 also differs at 3
METRIC = M.logit_diff_metric(torch.tensor([3, 4]), torch.tensor([5, 6]))
EXACT = dict(atol=1e-5, rtol=1e-5)
GRANULARITIES = [(p, "pos") for p in P.RESID_LIKE] + [(p, "all") for p in ("attn_out", "mlp_out", "resid_post")] + \
    [(p, "all") for p in P.HEAD_LIKE] + [(p, "pos") for p in ("z", "q", "k", "v")]


THREE_LAYERS = random_model(seed=3, n_layer=3)


@pytest.fixture(scope="module")
def model():
    return random_model()


def checksum(model):
    return sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in model.parameters())


def reference(model, result, clean, corrupted, metric, direction):
    """Per-prompt values [*axes, batch] from one full forward per patch."""
    out = torch.empty_like(result.per_prompt)
    for ix in itertools.product(*map(range, result.raw.shape)):
        kw = dict(zip(result.axes, ix))
        logits = P.patch_one(model, clean, corrupted, result.point, kw.pop("layer"), direction=direction, **kw)
        out[ix] = metric(logits)
    return out


# -- metrics ---------------------------------------------------------------------------------------
def test_metrics_values_and_validation():
    logits = torch.randn(B, T, 10)
    answer, wrong, pos = torch.tensor([1, 2]), 3, torch.tensor([4, 2])
    at = logits[torch.arange(B), pos]
    assert_close(M.logit_diff(logits, answer, wrong, pos), at[torch.arange(B), answer] - at[:, 3])
    assert_close(M.log_prob(logits, answer, -1), logits[:, -1].log_softmax(-1)[torch.arange(B), answer])
    assert_close(M.prob(logits, 7), logits[:, -1].softmax(-1)[:, 7])
    assert_close(M.logit_diff_metric(answer, wrong, pos)(logits), M.logit_diff(logits, answer, wrong, pos))
    kl = M.kl_to(logits, pos=2)
    assert_close(kl(logits), torch.zeros(B), atol=1e-6, rtol=0)
    p, q = logits[:, 2].softmax(-1), (2 * logits[:, 2]).softmax(-1)
    assert_close(kl(2 * logits), (p * (p.log() - q.log())).sum(-1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="id 10 is outside the vocabulary; allowed ids are 0..9"):
        M.logit_diff(logits, 10, 1)
    with pytest.raises(ValueError, match="position 5 is out of range .* allowed: -5..4"):
        M.log_prob(logits, 1, pos=5)
    with pytest.raises(ValueError, match=r"shape \[batch\]=\[2\]"):
        M.prob(logits, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="position -6"):
        M.logit_diff(logits, 1, 2, pos=torch.tensor([0, -6]))
    # ratio of batch means, not mean of ratios
    assert_close(M.normalized(torch.tensor([1.0, 3.0]), torch.tensor([4.0, 4.0]), torch.tensor([0.0, 0.0])),
                 torch.tensor(0.5))
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert torch.isnan(M.normalized(1.0, 2.0, 2.0))


# -- identities (docs/methods.md §1.6) -------------------------------------------------------------------
def test_resid_pre0_all_positions_restores_clean_and_noising_it_gives_corrupted(model):
    den = P.activation_patching(model, CLEAN, CORRUPTED, METRIC, "resid_pre", "all")
    assert_close(den.raw[0], torch.tensor(den.clean), **EXACT)
    assert_close(den.scores[0], torch.tensor(1.0), **EXACT)
    noi = P.activation_patching(model, CLEAN, CORRUPTED, METRIC, "resid_pre", "all", direction="noising")
    assert_close(noi.scores[0], torch.tensor(0.0), atol=1e-5, rtol=0)
    assert (den.direction, noi.direction, den.axes, den.metric) == ("denoising", "noising", ("layer",), "logit_diff")


@pytest.mark.parametrize("point,by", [("resid_pre", "pos"), ("mlp_out", "all"), ("z", "pos"), ("pattern", "all")])
def test_noising_with_corrupted_equal_to_clean_is_clean_everywhere(model, point, by):
    with pytest.warns(RuntimeWarning, match="undefined"):
        res = P.activation_patching(model, CLEAN, CLEAN.clone(), METRIC, point, by, direction="noising")
    assert_close(res.raw, torch.full_like(res.raw, res.clean), **EXACT)
    assert torch.isnan(res.scores).all()


@pytest.mark.parametrize("point", ["resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post"])
def test_causal_locality(model, point):
    corrupted_logits = model(CORRUPTED)
    for layer, p in [(0, 1), (1, 3), (1, 0)]:
        logits = P.patch_one(model, CLEAN, CORRUPTED, point, layer, pos=p)
        assert_close(logits[:, :p], corrupted_logits[:, :p], **EXACT)
    res = P.activation_patching(model, CLEAN, CORRUPTED, METRIC, point, "pos")
    # positions before the first differing one (2) are exact no-ops
    assert_close(res.raw[:, :2], torch.full((2, 2), res.corrupted), **EXACT)
    if point == "resid_pre":  # layer 0: only positions whose tokens differ can matter
        assert_close(res.raw[0, 4], torch.tensor(res.corrupted), **EXACT)


def test_denoising_every_head_and_mlp_reproduces_clean(model):
    # The embedding also feeds the final residual directly, so the identity holds at positions whose
    # tokens agree (0, 1, 4 here, the metric's included), and everywhere once hook_embed is patched too.
    names = lambda n: n.endswith(("attn.hook_z", "hook_mlp_out"))
    clean_logits, cache = model.run_with_cache(CLEAN, names_filter=lambda n: names(n) or n == "hook_embed")
    patched = model.run_with_hooks(CORRUPTED, fwd_hooks=[(names, lambda x, h: cache[h.name])])
    assert_close(patched[:, [0, 1, 4]], clean_logits[:, [0, 1, 4]], **EXACT)
    everything = model.run_with_hooks(CORRUPTED, fwd_hooks=[(lambda n: names(n) or n == "hook_embed",
                                                            lambda x, h: cache[h.name])])
    assert_close(everything, clean_logits, **EXACT)


# -- batched sweeps == one forward per patch --------------------------------------------------------
@pytest.mark.parametrize("point,by", GRANULARITIES)
def test_batched_sweep_equals_one_patch_at_a_time(model, point, by):
    res = P.activation_patching(model, CLEAN, CORRUPTED, METRIC, point, by, max_rows=6)  # chunks of 3 patches
    head_axes = {"pos": ("layer", "pos", "head"), "all": ("layer", "head")}[by]
    assert res.axes == (head_axes if point in P.HEAD_LIKE else ("layer", "pos") if by == "pos" else ("layer",))
    assert_close(res.per_prompt, reference(model, res, CLEAN, CORRUPTED, METRIC, "denoising"), **EXACT)
    assert_close(res.scores, (res.raw - res.corrupted) / (res.clean - res.corrupted), **EXACT)


@pytest.mark.parametrize("point,by", [("resid_mid", "pos"), ("v", "pos"), ("pattern", "all")])
def test_noising_sweep_equals_one_patch_at_a_time(model, point, by):
    res = P.activation_patching(model, CLEAN, CORRUPTED, METRIC, point, by, direction="noising")
    assert_close(res.per_prompt, reference(model, res, CLEAN, CORRUPTED, METRIC, "noising"), **EXACT)


@pytest.mark.parametrize("point,by", [("z", "pos"), ("q", "pos"), ("resid_post", "pos"), ("attn_out", "pos"),
                                      ("k", "pos"), ("resid_pre", "pos"), ("z", "all"), ("mlp_out", "all"),
                                      ("pattern", "all")])
@pytest.mark.parametrize("read", ["middle", "plain callable"])
@pytest.mark.parametrize("shared", [0, 2])
def test_sweep_shortcuts_equal_one_patch_at_a_time(point, by, read, shared):
    """The causal shortcuts (stop at the read position, layer l at p alone, keep_last=1 in the last block,
    nothing run before the first differing position) against full forwards: a Metric reading position 2
    (patches after it cannot move it), and a plain callable, which gets full logits; prompts that differ
    from position 0, or share their first two tokens."""
    model = THREE_LAYERS  # so that layers run between the patched one and the last
    corrupted = CORRUPTED.clone()
    corrupted[:, 0] = CORRUPTED[:, 0] if shared else torch.tensor([150, 160])
    metric = M.logit_diff_metric(torch.tensor([3, 4]), torch.tensor([5, 6]), pos=2)
    if read == "plain callable":
        metric = lambda logits: M.logit_diff(logits, torch.tensor([3, 4]), torch.tensor([5, 6]), pos=-2)  # noqa: E731
    for direction in ("denoising", "noising"):
        res = P.activation_patching(model, CLEAN, corrupted, metric, point, by, direction=direction, max_rows=6)
        assert_close(res.per_prompt, reference(model, res, CLEAN, corrupted, metric, direction), **EXACT)


@pytest.mark.parametrize("point,by", [("z", "all"), ("resid_pre", "pos"), ("z", "pos"), ("attn_out", "all")])
@pytest.mark.parametrize("context", ["zero position 1", "frozen ln_final scale"])
def test_sweeps_under_context_hooks_that_index_positions(point, by, context):
    """Hooks set with model.hooks(...) that index absolute positions (one writes position 1; one pins
    ln_final's scale [batch, pos, 1] to a cached run's, as a linearised analysis does): the positional
    shortcuts (runs that start at a later position, or stop at or unembed only the metric's) would
    misplace them, so sweeps run and unembed every position."""
    def zero_position_1(x, hook):
        x = x.clone()
        x[:, 1] = 0
        return x

    model = THREE_LAYERS
    metric = M.logit_diff_metric(torch.tensor([3, 4]), torch.tensor([5, 6]), pos=3)
    _, cached = model.run_with_cache(CORRUPTED, names_filter="ln_final.hook_scale")
    hooks = {"zero position 1": [("blocks.1.hook_resid_pre", zero_position_1)],
             "frozen ln_final scale": [("ln_final.hook_scale", lambda x, hook: cached["ln_final.hook_scale"])]}
    with model.hooks(fwd_hooks=hooks[context]):
        res = P.activation_patching(model, CLEAN, CORRUPTED, metric, point, by)
        assert_close(res.per_prompt, reference(model, res, CLEAN, CORRUPTED, metric, "denoising"), **EXACT)


def test_patches_before_the_prompts_differ_run_nothing(model):
    """Positions before the first differing token hold the same values in both runs: the sweep scores
    them as the baseline without a forward, and an all-position patch runs from that position on."""
    calls = []
    original = type(model).forward

    def counting(self, tokens, *args, **kwargs):
        calls.append(tokens.shape[1])
        return original(self, tokens, *args, **kwargs)

    type(model).forward = counting
    try:
        by_pos = P.activation_patching(model, CLEAN, CORRUPTED, METRIC, "resid_pre", "pos")
        widths_by_pos, calls[:] = list(calls), []
        P.activation_patching(model, CLEAN, CORRUPTED, METRIC, "z", "all")
        widths_all = list(calls)
    finally:
        type(model).forward = original
    assert_close(by_pos.raw[:, :2], torch.full((2, 2), by_pos.corrupted), atol=0, rtol=0)
    assert max(widths_by_pos[2:]) <= T - 2 and max(widths_all[2:]) <= T - 2  # after the two baseline runs
    with pytest.warns(RuntimeWarning, match="undefined"):  # clean = corrupted: no normalised score
        identical = P.activation_patching(model, CLEAN, CLEAN, METRIC, "z", "pos")
    assert_close(identical.raw, torch.full_like(identical.raw, identical.clean), atol=0, rtol=0)


def test_per_prompt_positions_and_plain_callable_metrics(model):
    pos = torch.tensor([4, 3])
    as_metric = M.log_prob_metric(torch.tensor([3, 9]), pos)
    plain = lambda logits: M.log_prob(logits, torch.tensor([3, 9]), pos)
    a = P.activation_patching(model, CLEAN, CORRUPTED, as_metric, "z", "all", max_rows=2)
    b = P.activation_patching(model, CLEAN, CORRUPTED, plain, "z", "all")
    assert_close(a.per_prompt, b.per_prompt, **EXACT)
    assert_close(a.per_prompt, reference(model, a, CLEAN, CORRUPTED, plain, "denoising"), **EXACT)
    kl = M.kl_to(model(CLEAN))
    res = P.activation_patching(model, CLEAN, CORRUPTED, kl, "resid_pre", "all")
    assert res.clean == pytest.approx(0, abs=1e-6) and res.raw[0] == pytest.approx(0, abs=1e-5)


# -- corruptions ------------------------------------------------------------------------------------
def test_unequal_lengths_raise_naming_lengths_and_positions(model):
    longer = torch.cat([CORRUPTED, CORRUPTED[:, :1]], 1)
    with pytest.raises(ValueError, match=r"clean has 5 tokens, corrupted 6\. .*differ at \[2, 3\]"):
        P.activation_patching(model, CLEAN, longer, METRIC)
    with pytest.raises(ValueError, match="direction='sideways'"):
        P.activation_patching(model, CLEAN, CORRUPTED, METRIC, direction="sideways")
    with pytest.raises(ValueError, match="per-destination is not implemented"):
        P.activation_patching(model, CLEAN, CORRUPTED, METRIC, "pattern", "pos")


def test_gaussian_noise_scale_is_the_std_of_the_embeddings_of_a_text_set(model):
    """ROME's nu = 3 x the std of token embeddings over text: rows no text uses must not count."""
    text = torch.tensor([[5, 9, 2, 5, 9, 14]])
    with torch.no_grad():
        sparse = random_model(vocab_size=257)
        sparse.W_E[20:] = 0  # as a small model's never-used rows
    noisy = P.gaussian_noise_embeddings(sparse, CLEAN % 20, [0, 1, 2, 3, 4], reference_tokens=text, seed=1)
    expected = 3 * float(sparse.W_E[text].std())
    assert expected > 2.5 * 3 * float(sparse.W_E.std())  # the whole table would give a much smaller scale
    assert noisy.name == f"gaussian_noise(std={expected:.3g})"
    prompts = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])  # by default, the prompts are the text set
    default = P.gaussian_noise_embeddings(sparse, prompts, [1, 2])
    assert default.name == f"gaussian_noise(std={3 * float(sparse.W_E[prompts].std()):.3g})"


def test_gaussian_noise_embeddings(model):
    noisy = P.gaussian_noise_embeddings(model, CLEAN, [1, 2], seed=3)
    _, clean_cache = model.run_with_cache(CLEAN, names_filter="hook_embed")
    _, noisy_cache = model.run_with_cache(CLEAN, names_filter="hook_embed", fwd_hooks=list(noisy.fwd_hooks))
    diff = noisy_cache["hook_embed"] - clean_cache["hook_embed"]
    assert (diff[:, [0, 3, 4]] == 0).all() and (diff[:, [1, 2]] != 0).all()
    assert float(diff[:, [1, 2]].std()) == pytest.approx(3 * float(model.W_E[CLEAN].std()), rel=0.15)
    res = P.activation_patching(model, CLEAN, noisy, METRIC, "resid_pre", "pos", max_rows=4)
    assert_close(res.per_prompt, reference(model, res, CLEAN, noisy, METRIC, "denoising"), **EXACT)
    assert_close(res.raw[:, 0], torch.full((2,), res.corrupted), **EXACT)  # before the noise: no-op


def test_mean_and_resample_ablation(model):
    reference_tokens = torch.randint(0, 257, (7, T))
    mean = P.mean_ablation(model, reference_tokens, batch_size=3)
    _, cache = model.run_with_cache(reference_tokens)
    assert_close(mean.values["blocks.1.attn.hook_z"], cache["blocks.1.attn.hook_z"].mean(0, keepdim=True), **EXACT)
    res = P.activation_patching(model, CLEAN, mean, METRIC, "resid_pre", "all", direction="noising")
    assert_close(res.scores[0], torch.tensor(0.0), atol=1e-5, rtol=0)
    for by in ("all", "pos"):
        z = P.activation_patching(model, CLEAN, mean, METRIC, "z", by, direction="noising")
        assert_close(z.per_prompt, reference(model, z, CLEAN, mean, METRIC, "noising"), **EXACT)
    with pytest.raises(ValueError, match="no corrupted prompt"):
        P.activation_patching(model, CLEAN, mean, METRIC)
    tokens = torch.arange(20).view(5, 4)
    shuffled = P.resample_ablation(tokens, seed=1)
    assert sorted(shuffled[:, 0].tolist()) == tokens[:, 0].tolist() and (shuffled != tokens).all(1).all()
    drawn = P.resample_ablation(CLEAN, reference_tokens, seed=0)
    assert drawn.shape == CLEAN.shape and all(any(torch.equal(r, q) for q in reference_tokens) for r in drawn)


def test_no_state_left_behind(model):
    before, logits = checksum(model), model(CLEAN)
    P.activation_patching(model, CLEAN, CORRUPTED, METRIC, "q", "pos")
    P.activation_patching(model, CLEAN, P.gaussian_noise_embeddings(model, CLEAN, 2), METRIC, "pattern", "all")
    with pytest.raises(ValueError):
        P.activation_patching(model, CLEAN, CORRUPTED[:, :4], METRIC)
    assert checksum(model) == before and not model.has_context_hooks
    assert torch.equal(model(CLEAN), logits)


def test_gpt2_small_shapes():
    """12 layers x 12 heads x 768 (a small vocabulary to keep it quick)."""
    model = random_model(n_layer=12, n_head=12, n_embd=768, n_positions=32, vocab_size=512)
    clean, corrupted, metric = CLEAN[:1, :4], CORRUPTED[:1, :4], M.logit_diff_metric(3, 5)
    res = P.activation_patching(model, clean, corrupted, metric, "resid_pre", "all")
    assert res.raw.shape == (12,)
    assert_close(res.raw[0], torch.tensor(res.clean), **EXACT)
    heads = P.activation_patching(model, clean, corrupted, metric, "attn_out", "all")
    for layer in (5, 11):
        assert_close(heads.per_prompt[layer], metric(P.patch_one(model, clean, corrupted, "attn_out", layer)), **EXACT)


def test_context_hooks_reach_the_unembedding_of_sweeps(model):
    """Hooks set with model.hooks(...) apply in every run of a sweep, the unembedding included."""
    clean, corrupted = torch.randint(0, 257, (2, 5)), torch.randint(0, 257, (2, 5))
    from minitx.metrics import logit_diff_metric
    metric = logit_diff_metric(3, 5)
    frozen = [("ln_final.hook_scale", lambda x, h: torch.full_like(x, 2.0))]
    with model.hooks(fwd_hooks=frozen):
        result = P.activation_patching(model, clean, corrupted, metric, "resid_pre", by="all")
        expected = metric(model(clean)).mean()
    # Denoising resid_pre[0] at every position is the clean run, under the same frozen scale.
    assert float(result.raw[0]) == pytest.approx(float(expected), abs=1e-5)
