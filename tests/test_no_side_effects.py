"""No analysis entry point leaves a trace on the model, also when it is interrupted halfway.

For EACH public entry point of heads, lens, dla, patching, path_patching and attribution (a function
whose first argument is the model; `test_every_entry_point_is_checked` keeps the list complete):
  - a checksum (sha256 of every parameter and buffer) is the same before and after;
  - requires_grad flags, .grad (None), train/eval mode, the grad mode and the caller's tensors are unchanged;
  - no hook is left (model.has_context_hooks is False) and the next forward equals a clean one, bitwise;
and the same holds after the entry point is interrupted from inside:
  - by the metric, raising on its 2nd call or halfway through the sweep (a Metric and a plain callable);
  - by the forward itself (MLP.forward raising a BaseException, as Ctrl-C would, on its 2nd call or halfway);
after which a second, uninterrupted call returns exactly what it returned before (nothing half-patched).
"""

import dataclasses
import hashlib
import inspect

import pytest
import torch
from torch.testing import assert_close

import minitx.model
from minitx import (attribution, discovery, dla, engine, heads, jacobian_lens, lens, metrics, path_patching, patching,
                    tuned_lens)
from tests.conftest import random_model

MODULES = (heads, lens, tuned_lens, jacobian_lens, dla, engine, patching, path_patching, attribution, discovery)
CLEAN = torch.tensor([[5, 9, 2, 5, 9, 2], [7, 1, 8, 7, 1, 8]])  # repeats, for the duplicate-token score
CORRUPTED = CLEAN.clone()
CORRUPTED[:, 2] = torch.tensor([3, 4])
SWAPPED = CLEAN[:, [0, 3, 2, 1, 4, 5]]  # positions 1 and 3 exchanged
REFERENCE = torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(0))


def model_fixture(requires_grad: bool):
    """3 layers x 3 heads, 24 wide, 16 positions, 50 ids (BOS 49)."""
    model = random_model(5, n_layer=3, n_head=3, n_embd=24, n_positions=16, vocab_size=50, bos_token_id=49)
    return model.requires_grad_(requires_grad)


# name -> (call(model, metric), takes a metric)
ENTRY_POINTS = {
    "heads.attention_patterns": (lambda m, f: heads.attention_patterns(m, CLEAN), False),
    "heads.offset_scores": (lambda m, f: heads.offset_scores(m, CLEAN, max_offset=3, exclude_bos=True), False),
    "heads.previous_token_scores": (lambda m, f: heads.previous_token_scores(m, CLEAN), False),
    "heads.bos_attention_scores": (lambda m, f: heads.bos_attention_scores(m, CLEAN), False),
    "heads.induction_scores": (lambda m, f: heads.induction_scores(m, n=4, batch=2, exclude_bos=True), False),
    "heads.duplicate_token_scores": (lambda m, f: heads.duplicate_token_scores(m, CLEAN), False),
    "heads.detect_head": (lambda m, f: heads.detect_head(m, CLEAN, "induction_head", heads=[(1, 0), (2, 2)],
                                                         exclude_bos=True, error_measure="abs"), False),
    "heads.role_swap": (lambda m, f: heads.role_swap(m, CLEAN, SWAPPED, (1, 3)), False),
    "lens.logit_lens": (lambda m, f: lens.logit_lens(m, CLEAN, targets="next", incl_mid=True,
                                                     positions=[0, 2, 4]), False),
    "lens.cached_scale_lens": (lambda m, f: lens.cached_scale_lens(m, CLEAN, incl_mid=True), False),
    "lens.unembed_hash": (lambda m, f: lens.unembed_hash(m), False),
    "tuned_lens.train_tuned_lens": (lambda m, f: list(tuned_lens.train_tuned_lens(m, [CLEAN, CLEAN],
                                                                                  progress=False).parameters()), False),
    "jacobian_lens.prompt_jacobians": (lambda m, f: jacobian_lens.prompt_jacobians(m, CLEAN[:1], [0, 1], 8, 1), False),
    "jacobian_lens.fit_jacobian_lens": (lambda m, f: jacobian_lens.fit_jacobian_lens(
        m, CLEAN, skip_first_positions=1, progress=False).jacobians, False),
    "dla.decompose_resid": (lambda m, f: dla.decompose_resid(m, CLEAN, pos=torch.tensor([5, 3])), False),
    "dla.direct_logit_attribution": (lambda m, f: dla.direct_logit_attribution(m, CLEAN, 3, wrong=5), False),
    "patching.gaussian_noise_embeddings": (lambda m, f: patching.gaussian_noise_embeddings(m, CLEAN, [1, 2]), False),
    "patching.mean_ablation": (lambda m, f: patching.mean_ablation(m, REFERENCE, batch_size=2), False),
    "engine.final_resid": (lambda m, f: engine.final_resid(m, m(CLEAN, stop_at_layer=1), 1), False),
    "engine.edge_graph": (lambda m, f: engine.edge_graph(m).n_edges, False),
    "engine.writer_values": (lambda m, f: engine.writer_values(m, CLEAN), False),
    "engine.ablation_values": (lambda m, f: engine.ablation_values(m, "mean", CLEAN, reference=REFERENCE), False),
    "engine.edge_patching": (lambda m, f: engine.edge_patching(
        m, CLEAN, torch.arange(engine.edge_graph(m).n_edges) % torch.tensor([[2], [3], [5]]) == 0,
        engine.ablation_values(m, "resample", CLEAN, corrupted=CORRUPTED), f, max_rows=2), True),
    "discovery.eap": (lambda m, f: discovery.eap(m, CLEAN, CORRUPTED, f), True),
    "discovery.eap_ig": (lambda m, f: discovery.eap_ig(m, CLEAN, CORRUPTED, f, steps=2, on="activations"), True),
    "discovery.faithfulness": (lambda m, f: discovery.faithfulness(
        m, CLEAN, torch.arange(engine.edge_graph(m).n_edges) % torch.tensor([[2], [3]]) == 0, f,
        engine.ablation_values(m, "zero", CLEAN), max_rows=2), True),
    "discovery.faithfulness_curve": (lambda m, f: discovery.faithfulness_curve(
        m, CLEAN, discovery.eap(m, CLEAN, CORRUPTED, plain_metric), f, [3, 10], ablation="resample",
        corrupted=CORRUPTED), True),
    "engine.metric_blocks": (lambda m, f: engine.metric_blocks(
        m, engine.final_resid(m, m(CLEAN, stop_at_layer=0).repeat(2, 1, 1), 0), f, 2), True),
    "engine.shortcuts": (lambda m, f: engine.shortcuts(m, CLEAN, CORRUPTED, f), False),
    "patching.sweep_plan": (lambda m, f: patching.sweep_plan(m, CLEAN, CORRUPTED, f, "z", "pos"), False),
    "path_patching.path_plan": (lambda m, f: path_patching.path_plan(m, CLEAN, CORRUPTED, [[("head", 0, 1)]],
                                                                     [("blocks.1.attn.hook_q", 0, 1)], 4), False),
    "patching.patch_one": (lambda m, f: patching.patch_one(m, CLEAN, CORRUPTED, "z", 1, pos=2, head=1), False),
    "patching.activation_patching[resid_pre,pos]": (lambda m, f: patching.activation_patching(
        m, CLEAN, CORRUPTED, f, "resid_pre", "pos", max_rows=4), True),
    "patching.activation_patching[z,all,noising]": (lambda m, f: patching.activation_patching(
        m, CLEAN, CORRUPTED, f, "z", "all", direction="noising", max_rows=4), True),
    "patching.activation_patching[pattern,noise]": (lambda m, f: patching.activation_patching(
        m, CLEAN, patching.gaussian_noise_embeddings(m, CLEAN, [1, 2]), f, "pattern", "all"), True),
    "patching.activation_patching[mean_ablation]": (lambda m, f: patching.activation_patching(
        m, CLEAN, patching.mean_ablation(m, REFERENCE), f, "mlp_out", "all", direction="noising"), True),
    "path_patching.path_patch": (lambda m, f: path_patching.path_patch(
        m, CLEAN, CORRUPTED, [(0, 1), ("mlp", 0)], [("q", 2, 0), ("v", 1, 2)], f, sender_pos=[2]), True),
    "path_patching.path_patch_senders[logits]": (lambda m, f: path_patching.path_patch_senders(
        m, CLEAN, CORRUPTED, "logits", f, max_rows=4), True),
    "path_patching.path_patch_senders[frozen]": (lambda m, f: path_patching.path_patch_senders(
        m, CLEAN, CORRUPTED, ("k", 2, 1), f, senders=[(0, 0), ("mlp", 1), "embed"], freeze_ln=True,
        freeze_mlps=True), True),
    "path_patching.direct_path_patch": (lambda m, f: path_patching.direct_path_patch(
        m, CLEAN, CORRUPTED, (0, 1), ("k", 2, 2), f), True),
    "attribution.attribution_patching": (lambda m, f: attribution.attribution_patching(
        m, CLEAN, CORRUPTED, f, points=("z", "pattern", "resid_mid")), True),
    "attribution.atp_star_qk_fix": (lambda m, f: attribution.atp_star_qk_fix(m, CLEAN, CORRUPTED, f, max_rows=4), True),
}
WITH_METRIC = [name for name, (_, takes) in ENTRY_POINTS.items() if takes]


def test_every_entry_point_is_checked():
    """Every public function of the analysis modules that takes the model first is in ENTRY_POINTS."""
    checked = {name.split("[")[0] for name in ENTRY_POINTS}
    public = set()
    for module in MODULES:
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_"):
                params = list(inspect.signature(fn).parameters)
                if params and params[0] == "model":
                    public.add(f"{module.__name__.split('.')[-1]}.{name}")
    assert public - checked == set(), "add these entry points to ENTRY_POINTS"


# ---- what "no trace" means ---------------------------------------------------------------------------------------
def checksum(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict(keep_vars=True).items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def snapshot(model) -> dict:
    return dict(checksum=checksum(model), requires_grad=[p.requires_grad for p in model.parameters()],
                grads=[p.grad for p in model.parameters()], training=model.training,
                inputs=[t.clone() for t in (CLEAN, CORRUPTED, SWAPPED, REFERENCE)], logits=model(CLEAN))


def assert_untouched(model, before: dict) -> None:
    assert checksum(model) == before["checksum"], "a parameter or buffer changed"
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    assert all(p.grad is None for p in model.parameters()), "a .grad was written"
    assert model.training == before["training"]
    assert not model.has_context_hooks, "a hook was left behind"
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(before["inputs"], (CLEAN, CORRUPTED, SWAPPED, REFERENCE)))
    assert torch.equal(model(CLEAN), before["logits"]), "the next forward differs from a clean one"


def leaves(result) -> list:
    """Every tensor and number in a result (dataclasses, named tuples, dicts, lists), in a fixed order."""
    if dataclasses.is_dataclass(result):
        return leaves([getattr(result, f.name) for f in dataclasses.fields(result)])
    if isinstance(result, dict):
        return leaves([result[k] for k in sorted(result)])
    if isinstance(result, (list, tuple)):
        return [leaf for item in result for leaf in leaves(item)]
    if isinstance(result, torch.Tensor):
        return [result.detach()]
    return [result]


def assert_same_result(a, b) -> None:
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor):
            assert_close(x, y, rtol=0, atol=0, equal_nan=True)
        elif isinstance(x, float) and x != x:
            assert y != y
        elif callable(x):  # a Corruption's hooks are closures: compared by what they do, below
            continue
        else:
            assert x == y


def plain_metric(logits):
    return metrics.logit_diff(logits, 3, 5)


METRIC = metrics.logit_diff_metric(3, 5)


# ---- uninterrupted -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("requires_grad", [False, True], ids=["frozen", "requires_grad"])
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_point_leaves_no_trace(name, requires_grad):
    model = model_fixture(requires_grad)
    call, _ = ENTRY_POINTS[name]
    before = snapshot(model)
    first = call(model, METRIC)
    assert_untouched(model, before)
    assert_same_result(call(model, METRIC), first)  # and a second call gives the same numbers


# ---- interrupted from inside ---------------------------------------------------------------------------------------
class MetricFailed(Exception):
    pass


class Interrupted(BaseException):  # not an Exception, as KeyboardInterrupt: only `finally` blocks run
    pass


def counting(fn, raise_at: int | None, exc):
    """fn wrapped to count its calls and raise exc on call number raise_at."""
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == raise_at:
            raise exc(f"raised on call {raise_at}")
        return fn(*args, **kwargs)

    return wrapped, calls


def make_metric(kind: str, raise_at: int | None):
    if kind == "Metric":  # the patching sweeps unembed one position and call its at_pos
        at_pos, calls = counting(METRIC.at_pos, raise_at, MetricFailed)
        return metrics.Metric("failing", at_pos, METRIC.pos), calls
    return counting(plain_metric, raise_at, MetricFailed)


def when(total: int, which: str) -> int:
    return 2 if which == "2nd" else max(2, total // 2 + 1)


@pytest.mark.parametrize("which", ["2nd", "halfway"])
@pytest.mark.parametrize("kind", ["Metric", "callable"])
@pytest.mark.parametrize("name", WITH_METRIC)
def test_metric_raising_midway_leaves_no_trace(name, kind, which):
    model = model_fixture(False)
    call, _ = ENTRY_POINTS[name]
    counted, calls = make_metric(kind, None)
    reference = call(model, counted)
    raise_at = when(calls[0], which)
    assert calls[0] >= raise_at, f"the metric is called only {calls[0]} times"
    before = snapshot(model)
    failing, _ = make_metric(kind, raise_at)
    with torch.no_grad():
        with pytest.raises(MetricFailed):
            call(model, failing)
        assert not torch.is_grad_enabled(), "the grad mode was not restored"
    assert_untouched(model, before)
    assert_same_result(call(model, counted), reference)


@pytest.mark.parametrize("which", ["2nd", "halfway"])
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_forward_interrupted_midway_leaves_no_trace(name, which, monkeypatch):
    model = model_fixture(False)
    call, _ = ENTRY_POINTS[name]
    forward = minitx.model.MLP.forward
    with monkeypatch.context() as patch:
        counted, calls = counting(forward, None, Interrupted)
        patch.setattr(minitx.model.MLP, "forward", counted)
        reference = call(model, METRIC)
    if calls[0] < 2:
        pytest.skip(f"{name} runs no forward through the blocks")
    before = snapshot(model)
    with monkeypatch.context() as patch:
        failing, _ = counting(forward, when(calls[0], which), Interrupted)
        patch.setattr(minitx.model.MLP, "forward", failing)
        with torch.no_grad():
            with pytest.raises(Interrupted):
                call(model, METRIC)
            assert not torch.is_grad_enabled(), "the grad mode was not restored"
    assert_untouched(model, before)
    assert_same_result(call(model, METRIC), reference)
