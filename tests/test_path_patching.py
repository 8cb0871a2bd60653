"""Path patching (Wang et al. 2022, App. B): docs/methods.md §2.6 identities on a small random model."""

import pytest
import torch
from torch.testing import assert_close

from minitx import metrics as M
from tests.conftest import random_model
from minitx import patching as P
from minitx import path_patching as PP

L, H, B, T = 3, 4, 2, 6
X_ORIG = torch.tensor([[11, 22, 33, 44, 55, 66], [77, 88, 99, 110, 121, 132]])
X_NEW = X_ORIG.clone()
X_NEW[:, 1] = torch.tensor([140, 150])
X_NEW[:, 3] = torch.tensor([160, 170])
METRIC = M.logit_diff_metric(torch.tensor([3, 4]), torch.tensor([5, 6]))
EXACT = dict(atol=1e-5, rtol=1e-5)
RECEIVERS = ["logits", ("q", 2, 1), [("k", 2, 0), ("v", 1, 3)], ("mlp_in", 1)]


@pytest.fixture(scope="module")
def model():
    return random_model(n_layer=L, n_head=H)


def checksum(model):
    return sum(float(p.double().sum()) + float(p.double().abs().sum()) for p in model.parameters())


def test_identical_inputs_give_the_baseline(model):
    for receivers in RECEIVERS:
        with pytest.warns(RuntimeWarning, match="undefined"):
            same = PP.path_patch_senders(model, X_ORIG, X_ORIG.clone(), receivers, METRIC,
                                         senders=[(0, 1), (0, 2), ("mlp", 0), "embed"])
        assert_close(same.raw, torch.full((4,), same.clean), **EXACT)


def test_no_sender_and_senders_without_a_path_are_refused(model):
    """Issue 12: these used to return 1.0 ("no effect"); a path that cannot exist is an error."""
    for receivers in RECEIVERS:
        with pytest.raises(ValueError, match="senders is empty"):
            PP.path_patch(model, X_ORIG, X_NEW, [], receivers, METRIC)
    for sender, receivers in [((1, 2), [("q", 1, 0), ("k", 0, 3), ("v", 1, 2)]), ((2, 0), ("mlp_in", 1)),
                              (("mlp", 1), [("mlp_in", 1), ("q", 1, 1)]), (("mlp", 0), ("v", 0, 0)),
                              ((1, 1), ("q", 1, 1)), (("mlp", 0), ("mlp_in", 0))]:
        for kw in ({}, {"freeze_mlps": True, "freeze_ln": True}):
            with pytest.raises(ValueError, match=r"has no path to receiver\(s\).*must come before"):
                PP.path_patch(model, X_ORIG, X_NEW, sender, receivers, METRIC, **kw)
    with pytest.raises(ValueError, match=r"sender \(2, 0\) has no path"):  # one impossible sender in a list
        PP.path_patch_senders(model, X_ORIG, X_NEW, ("q", 2, 0), METRIC, senders=[(0, 0), (2, 0)])
    # the same layer's MLP comes after its heads: a path, nonzero
    assert abs(float(PP.path_patch(model, X_ORIG, X_NEW, (1, 2), ("mlp_in", 1), METRIC).relative_change)) > 1e-4
    # a sender reaching one receiver of several is a path
    PP.path_patch(model, X_ORIG, X_NEW, (1, 2), [("q", 1, 0), ("k", 2, 0)], METRIC)


def test_sender_grid_is_nan_exactly_where_no_path_exists(model):
    sweep = PP.path_patch_senders(model, X_ORIG, X_NEW, [("k", 2, 0), ("mlp_in", 0)], METRIC)
    assert torch.isnan(sweep.scores[2]).all() and torch.isfinite(sweep.scores[:2]).all()
    assert torch.isnan(PP.path_patch_senders(model, X_ORIG, X_NEW, ("q", 0, 1), METRIC).per_prompt).all()


@pytest.mark.parametrize("pos", [None, -1])
def test_last_layer_sender_to_logits_is_noising_activation_patching(model, pos):
    by = "all" if pos is None else "pos"
    act = P.activation_patching(model, X_ORIG, X_NEW, METRIC, "z", by, direction="noising")
    for head in range(H):
        res = PP.path_patch(model, X_ORIG, X_NEW, (L - 1, head), "logits", METRIC, sender_pos=pos, receiver_pos=pos)
        expected = act.per_prompt[L - 1, head] if pos is None else act.per_prompt[L - 1, T - 1, head]
        assert_close(res.per_prompt, expected, **EXACT)
        assert_close(res.scores, act.scores[L - 1, head] if pos is None else act.scores[L - 1, T - 1, head], **EXACT)


def two_full_forwards(model, sender: tuple, receivers, x_orig=X_ORIG, x_new=X_NEW, receiver_pos=None):
    """Wang et al. 2022 App. B written out literally, per prompt [batch]: pass C runs x_orig with every
    head's z frozen to x_orig's but the sender's, set to x_new's, recording each receiver before any
    hook changes it; pass D runs x_orig with only the receivers set to the recorded values (at
    receiver_pos, an int, or all positions). Receiver "logits": the metric of pass C's logits there."""
    zs = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    new, orig = (model.run_with_cache(x, names_filter=zs)[1] for x in (x_new, x_orig))
    where = slice(None) if receiver_pos is None else receiver_pos
    recorded = {}

    def freeze(z, hook):
        frozen = orig[hook.name].clone()
        if hook.name == zs[sender[0]]:
            frozen[:, :, sender[1]] = new[hook.name][:, :, sender[1]]
        return frozen

    def record(x, hook):
        recorded[hook.name] = x.clone()

    receivers = [receivers] if receivers == "logits" or isinstance(receivers, tuple) else receivers
    names = sorted({f"blocks.{r[1]}.attn.hook_{r[0]}" for r in receivers if r != "logits"})
    logits_c = model.run_with_hooks(x_orig, fwd_hooks=[(n, record) for n in names] + [(z, freeze) for z in zs])
    if receivers == ["logits"]:
        logits = model(x_orig).clone()
        logits[:, where] = logits_c[:, where]
        return METRIC(logits)

    def patch(x, hook):
        x = x.clone()
        for kind, layer, head in receivers:
            if hook.name == f"blocks.{layer}.attn.hook_{kind}":
                x[:, where, head] = recorded[hook.name][:, where, head]
        return x

    return METRIC(model.run_with_hooks(x_orig, fwd_hooks=[(n, patch) for n in names]))


@pytest.mark.parametrize("sender, receivers", [((0, 1), ("k", 2, 0)), ((0, 2), [("q", 1, 3), ("v", 2, 1)]),
                                                ((1, 0), [("v", 2, 2), ("k", 2, 3)]), ((0, 3), "logits"),
                                                ((1, 2), [("q", 2, h) for h in range(H)])])
@pytest.mark.parametrize("receiver_pos", [None, -1])
@pytest.mark.parametrize("shared", [0, 1])
def test_equals_the_algorithm_as_two_full_forwards(model, sender, receivers, receiver_pos, shared):
    """Against the literal algorithm, on prompts that differ from position 0 or share their first token."""
    x_new = X_NEW.clone()
    x_new[:, 0] = X_NEW[:, 0] if shared else torch.tensor([180, 190])
    expected = two_full_forwards(model, sender, receivers, X_ORIG, x_new, receiver_pos)
    result = PP.path_patch(model, X_ORIG, x_new, sender, receivers, METRIC, receiver_pos=receiver_pos)
    assert_close(result.per_prompt, expected, **EXACT)
    sweep = PP.path_patch_senders(model, X_ORIG, x_new, receivers, METRIC, receiver_pos=receiver_pos, max_rows=6)
    assert_close(sweep.per_prompt[sender], expected, **EXACT)


def test_under_context_hooks_that_index_positions(model):
    """A model.hooks(...) hook writing absolute position 1 would be misplaced by runs that start at the
    first differing position (2 here), so under context hooks every position runs."""
    def zero_position_1(x, hook):
        x = x.clone()
        x[:, 1] = 0
        return x

    x_new = X_NEW.clone()
    x_new[:, 1] = X_ORIG[:, 1]  # the prompts now share positions 0 and 1
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_pre", zero_position_1)]):
        for receivers in [("k", 2, 0), "logits"]:
            expected = two_full_forwards(model, (0, 1), receivers, X_ORIG, x_new)
            result = PP.path_patch(model, X_ORIG, x_new, (0, 1), receivers, METRIC)
            assert_close(result.per_prompt, expected, **EXACT)


def test_sender_at_all_positions_equals_sender_at_receiver_positions(model):
    per_example = torch.tensor([5, 3])  # one receiver position per prompt
    for receivers in RECEIVERS:
        for sender in [(0, 1), ("mlp", 0), "embed"]:
            everywhere = PP.path_patch(model, X_ORIG, X_NEW, sender, receivers, METRIC, receiver_pos=per_example)
            there = PP.path_patch(model, X_ORIG, X_NEW, sender, receivers, METRIC, receiver_pos=per_example,
                                  sender_pos=per_example)
            assert_close(everywhere.per_prompt, there.per_prompt, **EXACT)


@pytest.mark.parametrize("freeze_mlps,freeze_ln", [(False, False), (True, True)])
def test_batched_sender_sweep_equals_single_experiments(model, freeze_mlps, freeze_ln):
    for receivers in RECEIVERS:
        sweep = PP.path_patch_senders(model, X_ORIG, X_NEW, receivers, METRIC, max_rows=6,
                                      freeze_mlps=freeze_mlps, freeze_ln=freeze_ln)
        assert sweep.axes == ("layer", "head") and sweep.raw.shape == (L, H)
        single = torch.full((L, H, B), float("nan"))  # NaN where a head has no path to the receivers
        for l in range(L):
            for h in range(H):
                try:
                    single[l, h] = PP.path_patch(model, X_ORIG, X_NEW, (l, h), receivers, METRIC,
                                                 freeze_mlps=freeze_mlps, freeze_ln=freeze_ln).per_prompt
                except ValueError as error:
                    assert "has no path" in str(error)
        assert_close(sweep.per_prompt, single, equal_nan=True, **EXACT)
        assert_close(sweep.relative_change, (sweep.raw - sweep.clean) / sweep.clean, equal_nan=True, **EXACT)
        assert_close(sweep.scores, (sweep.raw - sweep.corrupted) / (sweep.clean - sweep.corrupted), equal_nan=True,
                     **EXACT)
        assert sweep.clean_per_prompt.shape == sweep.corrupted_per_prompt.shape == (B,)
        assert_close(sweep.clean_per_prompt, METRIC(model(X_ORIG)), **EXACT)
        assert_close(sweep.corrupted_per_prompt, METRIC(model(X_NEW)), **EXACT)
    others = [("mlp", 1), "embed", ("mlp", 0)]
    sweep = PP.path_patch_senders(model, X_ORIG, X_NEW, ("q", 2, 3), METRIC, senders=others, max_rows=4)
    single = torch.stack([PP.path_patch(model, X_ORIG, X_NEW, s, ("q", 2, 3), METRIC).per_prompt for s in others])
    assert_close(sweep.per_prompt, single, **EXACT)


def test_frozen_mlps_and_ln_to_logits_is_the_direct_logit_attribution(model):
    """docs/methods.md §2.6 item 4: with MLPs and LN scales frozen, the change in logit difference at END is
    <LN_frozen(delta o_s), W_U[r] - W_U[r']>."""
    (l, h), answer, wrong = (1, 2), torch.tensor([3, 4]), torch.tensor([5, 6])
    res = PP.path_patch(model, X_ORIG, X_NEW, (l, h), "logits", METRIC, freeze_mlps=True, freeze_ln=True)
    z = model.run_with_cache(X_NEW, names_filter=f"blocks.{l}.attn.hook_z")[1][f"blocks.{l}.attn.hook_z"]
    _, cache = model.run_with_cache(X_ORIG, names_filter=[f"blocks.{l}.attn.hook_z", "ln_final.hook_scale"])
    delta = (z - cache[f"blocks.{l}.attn.hook_z"])[:, -1, h] @ model.W_O[l, h]  # [batch, d_model]
    delta = (delta - delta.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"][:, -1] * model.ln_final.w
    expected = (delta * (model.W_U[:, answer] - model.W_U[:, wrong]).T).sum(-1)
    m_orig = METRIC(model(X_ORIG))
    assert_close(res.per_prompt - m_orig, expected, atol=1e-5, rtol=1e-4)


def test_validation_direct_path_and_no_state(model):
    before, logits = checksum(model), model(X_ORIG)
    with pytest.raises(ValueError, match="'logits' alone"):
        PP.path_patch(model, X_ORIG, X_NEW, (0, 0), ["logits", ("q", 1, 0)], METRIC)
    with pytest.raises(ValueError, match=r"sender \(3, 0\)"):
        PP.path_patch(model, X_ORIG, X_NEW, (3, 0), "logits", METRIC)
    with pytest.raises(ValueError, match=r"receiver \('z', 1, 0\)"):
        PP.path_patch(model, X_ORIG, X_NEW, (0, 0), ("z", 1, 0), METRIC)
    with pytest.raises(ValueError, match="clean has 6 tokens, corrupted 5"):
        PP.path_patch(model, X_ORIG, X_NEW[:, :5], (0, 0), "logits", METRIC)
    with pytest.raises(ValueError, match=r"sender \(1, 0\) has no edge to receiver \('q', 1, 2\)"):
        PP.direct_path_patch(model, X_ORIG, X_NEW, (1, 0), ("q", 1, 2), METRIC)
    edge = PP.direct_path_patch(model, X_ORIG, X_NEW, (0, 1), ("v", 2, 3), METRIC)
    assert torch.isfinite(edge.scores) and float(edge.scores) != 0.0
    assert_close(edge.scores, (edge.raw - edge.corrupted) / (edge.clean - edge.corrupted), **EXACT)
    PP.path_patch_senders(model, X_ORIG, X_NEW, ("q", 2, 0), METRIC, freeze_ln=True, freeze_mlps=True)
    assert checksum(model) == before and not model.has_context_hooks
    assert torch.equal(model(X_ORIG), logits)
