"""The intervention engine's helpers (minitx.engine), each against a known answer or the plain forward.

The shortcuts they serve are exact (docs/methods.md §1.6): these tests pin the pieces the sweeps of
test_patching.py and test_path_patching.py are built from.
"""

import pytest
import torch
from torch.testing import assert_close

from minitx import engine as E
from minitx import metrics as M
from tests.conftest import random_model

CLEAN = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
CORRUPTED = torch.tensor([[5, 6, 70, 8, 9], [10, 11, 12, 130, 14]])  # differ at 2 (row 0) and 3 (row 1)
EXACT = dict(atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def model():
    return random_model(n_layer=3)


def test_token_batch():
    assert E.token_batch(torch.tensor([1, 2, 3])).shape == (1, 3)
    assert E.token_batch(CLEAN) is CLEAN
    with pytest.raises(TypeError, match="integer ids, got torch.float32"):
        E.token_batch(CLEAN.float())
    with pytest.raises(TypeError, match="got list"):
        E.token_batch([[1, 2]])
    with pytest.raises(ValueError, match=r"at least one token, got shape \(2, 0\)"):
        E.token_batch(CLEAN[:, :0])


def test_check_metric_values():
    values = torch.tensor([1.0, -2.0])
    assert E.check_metric_values(values, 2) is values
    with pytest.raises(ValueError, match=r"to \[batch\]=\[2\], got \(2, 1\)"):
        E.check_metric_values(values[:, None], 2)
    with pytest.raises(ValueError, match=r"to \[batch\]=\[2\], got float"):
        E.check_metric_values(1.0, 2)
    with pytest.raises(ValueError, match="returned nan for prompt 1 \\(1 of 2 prompts not finite\\)"):
        E.check_metric_values(torch.tensor([1.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="returned inf for prompt 0 \\(2 of 2"):
        E.check_metric_values(torch.tensor([float("inf"), -float("inf")]), 2)


def test_differing_positions_and_shared_prefix():
    assert E.differing_positions(CLEAN, CORRUPTED) == [2, 3]
    assert E.shared_prefix(CLEAN, CORRUPTED) == 2
    assert E.shared_prefix(CLEAN, CLEAN.clone()) == 5  # identical: every position shared
    assert E.differing_positions(CLEAN, CORRUPTED[:, :3]) == [2]  # over the common length
    assert E.differing_positions(CLEAN, CORRUPTED[:1]) == []  # batch sizes differ: no pairing
    assert E.shared_prefix(torch.tensor([1, 2, 3]), torch.tensor([9, 2, 3])) == 0


def test_check_same_shape():
    E.check_same_shape(CLEAN, CORRUPTED)
    E.check_same_shape(CLEAN, E.Corruption(CORRUPTED))
    with pytest.raises(ValueError, match=r"clean has 5 tokens, corrupted 3\. Over the first 3 positions tokens "
                                         r"differ at \[2\]; positions 3\.\.4 exist in only one"):
        E.check_same_shape(CLEAN, CORRUPTED[:, :3])
    with pytest.raises(ValueError, match="clean has 2 prompts and corrupted 1"):
        E.check_same_shape(CLEAN, CORRUPTED[:1])
    values = E.Corruption(None, values={"blocks.0.hook_resid_pre": torch.zeros(1, 4, 8)})
    with pytest.raises(ValueError, match="clean has 5 tokens, corrupted 4"):
        E.check_same_shape(CLEAN, values)


def test_position_mask():
    def where(mask):
        return [row.nonzero()[:, 0].tolist() for row in mask]

    assert where(E.position_mask(None, 2, 4)) == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert where(E.position_mask(-1, 2, 4)) == [[3], [3]]
    assert where(E.position_mask([0, -2], 2, 4)) == [[0, 2], [0, 2]]
    assert where(E.position_mask(torch.tensor([1, 3]), 2, 4)) == [[1], [3]]  # one per prompt
    assert where(E.position_mask(torch.tensor([[0, 1], [2, 3]]), 2, 4)) == [[0, 1], [2, 3]]
    bool_mask = torch.tensor([[True, False, False, True], [False] * 4])
    assert torch.equal(E.position_mask(bool_mask, 2, 4), bool_mask)
    with pytest.raises(ValueError, match="position 4 is out of range for prompts of 4 tokens"):
        E.position_mask(4, 2, 4)
    with pytest.raises(ValueError, match="empty list"):
        E.position_mask([], 2, 4)
    with pytest.raises(ValueError, match="positions must be None, an int"):
        E.position_mask(1.5, 2, 4)
    with pytest.raises(ValueError, match=r"boolean position mask must be \[batch, pos\]=\[2, 4\]"):
        E.position_mask(bool_mask[:, :3], 2, 4)


def test_read_position():
    assert E.read_position(M.logit_diff_metric(1, 2), 2, 5) == 4  # pos=-1
    assert E.read_position(M.logit_diff_metric(1, 2, pos=torch.tensor([3, 3])), 2, 5) == 3
    assert E.read_position(M.logit_diff_metric(1, 2, pos=torch.tensor([3, 4])), 2, 5) is None  # differs by prompt
    assert E.read_position(lambda logits: logits[:, -1, 0], 2, 5) is None  # not a Metric: reads anywhere


def test_shortcuts(model):
    metric = M.logit_diff_metric(1, 2, pos=3)
    assert E.shortcuts(model, CLEAN, CORRUPTED, metric) == E.Shortcuts(True, 2, 3, 4, 1)
    assert E.shortcuts(model, CLEAN, CORRUPTED, None) == E.Shortcuts(True, 2, None, 5, None)
    noisy = E.Corruption(CORRUPTED, (("hook_embed", lambda x, h: x),))  # embedding hooks may act anywhere
    assert E.shortcuts(model, CLEAN, noisy, metric).shared == 0
    assert E.shortcuts(model, CLEAN, E.Corruption(CORRUPTED), metric).shared == 2
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, h: x)]):
        assert E.shortcuts(model, CLEAN, CORRUPTED, metric) == E.Shortcuts(False, 0, None, 5, None)


def test_cached_past_and_final_resid(model):
    names = [f"blocks.{l}.{p}" for l in range(3) for p in ("attn.hook_k", "attn.hook_v", "hook_resid_pre")]
    _, cache = model.run_with_cache(CLEAN, names_filter=names + ["blocks.2.hook_resid_post"])
    assert E.cached_past(cache, [1, 2], 0, 3) is None
    past = E.cached_past(cache, [1, 2], 2, 3)  # 3 experiments side by side
    assert len(past) == 2 and past[0][0].shape == (3 * 2, 2, 4, 16)
    assert torch.equal(past[1][1][4:], cache["blocks.2.attn.hook_v"][:, :2])
    full = cache["blocks.2.hook_resid_post"]
    assert_close(E.final_resid(model, cache["blocks.1.hook_resid_pre"], 1), full, **EXACT)
    # positions 2.. alone, with the earlier keys and values from the cache: the same stream there
    suffix = E.final_resid(model, cache["blocks.1.hook_resid_pre"][:, 2:], 1,
                           past_kv=E.cached_past(cache, [1, 2], 2, 1))
    assert_close(suffix, full[:, 2:], **EXACT)
    double = E.final_resid(model, cache["blocks.2.hook_resid_pre"], 2,
                           fwd_hooks=[("blocks.2.hook_mlp_out", lambda x, h: 2 * x)])
    _, mlp = model.run_with_cache(CLEAN, names_filter="blocks.2.hook_mlp_out")
    assert_close(double, full + mlp["blocks.2.hook_mlp_out"], **EXACT)


def test_metric_blocks(model):
    metric = M.logit_diff_metric(torch.tensor([1, 2]), torch.tensor([3, 4]), pos=2)
    _, cache = model.run_with_cache(torch.cat([CLEAN, CORRUPTED]), names_filter=["blocks.2.hook_resid_post",
                                                                                  "ln_final.hook_scale"])
    resid = cache["blocks.2.hook_resid_post"]  # two experiments of batch 2: rows 0-1 and 2-3
    expected = torch.stack([metric(model(CLEAN)), metric(model(CORRUPTED))])
    assert_close(E.metric_blocks(model, resid, metric, 2), expected, **EXACT)
    assert_close(E.metric_blocks(model, resid, lambda x: metric(x), 2), expected, **EXACT)  # a plain callable
    assert_close(E.metric_blocks(model, resid[:, 2:3], metric, 2, read_only=True), expected, **EXACT)
    # ln_final's scale frozen to the clean run's, for both experiments: the clean experiment is unchanged
    scale = cache["ln_final.hook_scale"][:2]
    frozen = E.metric_blocks(model, resid, metric, 2, ln_final_scale=scale)
    assert_close(frozen[0], expected[0], **EXACT)
    by_hand = metric(model.unembed(resid[2:], fwd_hooks=[("ln_final.hook_scale", lambda x, h: scale)]))
    assert_close(frozen[1], by_hand, **EXACT)
    with pytest.raises(ValueError, match="returned nan"):
        E.metric_blocks(model, resid, lambda x: x[:, -1, 0] * float("nan"), 2)


# -- the edge graph and exact edge patching (docs/methods.md §12.1-12.2) -------------------------------------
def enumerate_edges(n_layer, n_head):
    """Every (writer, reader) pair, listed from the architecture: what each reader's input sums."""
    heads = lambda layers: [f"{l}.{h}" for l in layers for h in range(n_head)]  # noqa: E731
    edges = []
    for l in range(n_layer):
        before = ["input"] + heads(range(l)) + [f"mlp{m}" for m in range(l)]
        edges += [(w, f"{l}.{h}.{c}") for c in "qkv" for h in range(n_head) for w in before]
        edges += [(w, f"mlp{l}") for w in before + heads([l])]
    edges += [(w, "logits") for w in ["input"] + heads(range(n_layer)) + [f"mlp{l}" for l in range(n_layer)]]
    return edges


@pytest.mark.parametrize("n_layer, n_head", [(1, 1), (2, 1), (2, 2), (3, 4), (12, 12)])
def test_edge_count_formula_matches_an_enumeration(n_layer, n_head):
    graph = E.EdgeGraph(n_layer, n_head)
    expected = enumerate_edges(n_layer, n_head)
    assert E.edge_count(n_layer, n_head) == len(expected) == len(graph.edges)
    labels = {tuple(graph.label(e).split(" -> ")) for e in range(len(graph.edges))}
    assert labels == set(expected)
    if (n_layer, n_head) == (12, 12):
        assert graph.n_edges == 32491  # GPT-2 small: "about 32,000"


def literal_edge_patch(model, tokens, patched_edges, ablated, metric):
    """docs/methods.md §12.2 written out: every reader's input rebuilt from scratch as the sum of its writers'
    outputs in this run (kept edges) or their ablated values (patched edges), plus the biases before it."""
    graph = E.edge_graph(model)
    L, H = model.cfg.n_layer, model.cfg.n_head
    patched = {tuple(graph.edges[e].tolist()) for e in patched_edges}
    current = {}

    def value(w, source):  # writer w's output [batch, pos, d_model]
        if w == 0:
            return source["input"]
        layer, offset = divmod(w - 1, H + 1)
        return source["mlp", layer] if offset == H else source["head", layer][:, :, offset]

    ablated_source = {"input": ablated.input, **{("head", l): ablated.heads[l] for l in range(L)},
                      **{("mlp", l): ablated.mlps[l] for l in range(L)}}

    def rebuilt(r, x):
        bias_layers = [l for l in range(L) if 2 * l < graph.reader_time(r)]
        total = sum(model.b_O[l] for l in bias_layers) + torch.zeros_like(x)
        for w in range(graph.n_writers):
            if graph.writer_time(w) < graph.reader_time(r):
                total = total + value(w, ablated_source if (w, r) in patched else current).expand_as(x)
        return total

    def record(key):
        def hook(x, h):
            current[key] = x
        return hook

    def rebuild_heads(kind, layer):
        def hook(x, h):
            return torch.stack([rebuilt(graph.reader(kind, layer, head), x[:, :, head]) for head in range(H)], 2)
        return hook

    hooks = [("blocks.0.hook_resid_pre", record("input"))]
    for l in range(L):
        hooks += [(f"blocks.{l}.hook_{c}_input", rebuild_heads(c, l)) for c in "qkv"]
        hooks += [(f"blocks.{l}.attn.hook_result", record(("head", l))),
                  (f"blocks.{l}.hook_mlp_in", lambda x, h, l=l: rebuilt(graph.reader("mlp", l), x)),
                  (f"blocks.{l}.hook_mlp_out", record(("mlp", l)))]
    hooks.append((f"blocks.{L - 1}.hook_resid_post", lambda x, h: rebuilt(graph.reader("logits"), x)))
    return metric(model.run_with_hooks(tokens, fwd_hooks=hooks))


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_edge_patching_equals_the_literal_definition(model, ablation):
    graph = E.edge_graph(model)
    metric = M.logit_diff_metric(torch.tensor([1, 2]), torch.tensor([3, 4]))
    reference = torch.randint(0, 257, (6, 5), generator=torch.Generator().manual_seed(1))
    ablated = E.ablation_values(model, ablation, CLEAN, corrupted=CORRUPTED, reference=reference)
    g = torch.Generator().manual_seed(3)
    sets = [torch.randperm(graph.n_edges, generator=g)[:k] for k in (1, 5, 40, graph.n_edges // 2)]
    sets.append(torch.tensor([graph.edges.tolist().index([graph.writer("head", 0, 1), graph.reader("k", 2, 3)])]))
    masks = torch.zeros(len(sets), graph.n_edges, dtype=torch.bool)
    for i, edges in enumerate(sets):
        masks[i, edges] = True
    got = E.edge_patching(model, CLEAN, masks, ablated, metric, max_rows=4)  # two sets per forward
    for i, edges in enumerate(sets):
        assert_close(got[i], literal_edge_patch(model, CLEAN, edges.tolist(), ablated, metric), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_edge_patching_dense_sets_and_a_shared_prefix_equal_the_literal_definition(model, ablation):
    """Sets that patch most edges (read through the kept edges and the writers' total change) and sets that
    patch few (read through the patched edges), side by side in chunks; a `Metric` reading the last position
    lets a resample run start after the shared prefix (positions 0-1 here) with the clean run's keys and
    values, while the same metric as a plain callable runs every position: both equal the definition."""
    graph = E.edge_graph(model)
    metric = M.logit_diff_metric(torch.tensor([1, 2]), torch.tensor([3, 4]))
    reference = torch.randint(0, 257, (6, 5), generator=torch.Generator().manual_seed(1))
    ablated = E.ablation_values(model, ablation, CLEAN, corrupted=CORRUPTED, reference=reference)
    g = torch.Generator().manual_seed(5)
    sparse = torch.rand(3, graph.n_edges, generator=g) < torch.tensor([[0.02], [0.1], [0.3]])
    masks = torch.cat([sparse, ~sparse])  # few patched, then most patched
    got = E.edge_patching(model, CLEAN, masks, ablated, metric, max_rows=4)
    plain = E.edge_patching(model, CLEAN, masks, ablated, lambda logits: metric(logits), max_rows=6)
    for i, mask in enumerate(masks):
        expected = literal_edge_patch(model, CLEAN, mask.nonzero()[:, 0].tolist(), ablated, metric)
        assert_close(got[i], expected, atol=1e-5, rtol=1e-5)
        assert_close(plain[i], expected, atol=1e-5, rtol=1e-5)


def test_edge_patching_all_edges_is_the_corrupted_run_and_none_the_clean_run(model):
    graph = E.edge_graph(model)
    metric = M.logit_diff_metric(torch.tensor([1, 2]), torch.tensor([3, 4]))
    ablated = E.ablation_values(model, "resample", CLEAN, corrupted=CORRUPTED)
    masks = torch.stack([torch.ones(graph.n_edges, dtype=torch.bool), torch.zeros(graph.n_edges, dtype=torch.bool)])
    got = E.edge_patching(model, CLEAN, masks, ablated, metric)
    assert_close(got[0], metric(model(CORRUPTED)), atol=1e-5, rtol=1e-5)
    assert_close(got[1], metric(model(CLEAN)), atol=1e-6, rtol=1e-6)
    # every edge into the logits from the input and the heads: the final residual becomes the corrupted run's
    # writers' sum, plus the current MLP outputs
    with pytest.raises(ValueError, match="ablation='median'"):
        E.ablation_values(model, "median", CLEAN)
    with pytest.raises(ValueError, match="needs corrupted="):
        E.ablation_values(model, "resample", CLEAN)
    with pytest.raises(ValueError, match=r"bool mask \[n_sets, n_edges="):
        E.edge_patching(model, CLEAN, torch.ones(3, dtype=torch.bool), ablated, metric)


def test_edge_patching_refuses_ablated_values_of_another_batch_or_length(model):
    """HD: ablated values for 2 prompts (or 7 positions) against tokens [4, 5] raised torch's 'The size of tensor
    a (4) must match the size of tensor b (2)' from inside a hook; a clear ValueError naming `ablated` instead."""
    graph = E.edge_graph(model)
    metric = M.logit_diff_metric(1, 2)
    tokens = torch.cat([CLEAN, CORRUPTED])  # [4, 5]
    masks = torch.ones(2, graph.n_edges, dtype=torch.bool)
    two_prompts = E.ablation_values(model, "resample", CLEAN, corrupted=CORRUPTED)  # rows 2, not 1 or 4
    longer = E.ablation_values(model, "resample", torch.cat([tokens, tokens[:, :2]], 1),
                               corrupted=torch.cat([tokens, tokens[:, :2]], 1))  # 7 positions, not 5
    for ablated in (two_prompts, longer):
        with pytest.raises(ValueError, match="ablated"):
            E.edge_patching(model, tokens, masks, ablated, metric)
