"""Circuit discovery: score every edge between components, keep the best, and check the circuit's faithfulness.

    graph = edge_graph(model)                                    # writers -> readers, docs/methods.md §12.1
    scores = eap(model, clean, corrupted, metric)                # one score per edge (2 forwards, 1 backward)
    scores = eap_ig(model, clean, corrupted, metric, steps=5, on="inputs")   # or on="activations"
    curve = faithfulness_curve(model, clean, scores, metric, ks=[4, 8, 16], ablation="resample",
                               corrupted=corrupted)              # F(C) of the top-k circuits, and of their complements

Edge scores, noising form (docs/methods.md §12.3, Syed et al. 2023): for an edge u -> v,
    score(u -> v) = (a_u(x') - a_u(x)) . dm/d in_v,
the change of the writer's own output dotted with the gradient of the metric at the reader's input on the
clean run x: an estimate of m(x, edge u -> v patched to x') - m(x). Negative: the edge carries what the
metric needs. EAP takes the gradient at x; EAP-IG (Hanna et al. 2024) averages it along a straight path:
"on inputs" from the corrupted to the clean input embeddings (m forwards and backwards), "on activations"
from each reader's clean input towards its input with the chosen edges patched, one group of readers at a
time, everything downstream recomputed ((2 n_layer + 1) x m partial forwards and backwards). Each score is
available per prompt (`per_prompt`); `scores` is their mean.

Circuits (docs/methods.md §12.3): the top k edges by |score|, less edges that lie on no path from the input to
the logits (`prune`). Faithfulness F(C) = (m(C) - m(empty)) / (m(G) - m(empty)) on batch means, where m(C)
runs the clean prompts with every edge outside C patched by exact edge patching (`minitx.engine.edge_patching`),
m(G) is the clean run and m(empty) has every edge patched. The ablation that patches an edge (resample, mean
or zero) is a required argument and is reported: the circuit found depends on it (Miller et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from minitx.checks import check_count, check_tokens
from minitx.engine import (ABLATIONS, EdgeGraph, WriterValues, ablation_values, cached_past, check_same_shape,
                           edge_graph, edge_patching, metric_blocks, shortcuts, writer_points, writers_of)
from minitx.hooks import get_act_name
from minitx.metrics import metric_name
from minitx.results import Result

__all__ = ["EdgeScores", "CircuitCurve", "eap", "eap_ig", "top_edges", "prune", "faithfulness", "faithfulness_curve"]


@dataclass(kw_only=True, repr=False)
class EdgeScores(Result):
    """One score per edge of `graph` (noising form, module docstring): scores [edge] (mean over prompts),
    per_prompt [edge, prompt], clean/corrupted: the batch-mean metric on each run. Extras: graph, method."""

    axes: tuple = ("edge",)
    graph: EdgeGraph
    method: str

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k edges of largest |score|, as (label, score), largest first."""
        order = self.scores.abs().argsort(descending=True)[:k]
        return [(self.graph.label(int(e)), float(self.scores[e])) for e in order]


def _check_pair(model, clean: Tensor, corrupted: Tensor) -> tuple[Tensor, Tensor]:
    clean, corrupted = check_tokens(clean, model.cfg.d_vocab), check_tokens(corrupted, model.cfg.d_vocab)
    check_same_shape(clean, corrupted)
    return clean, corrupted


def _deltas(graph: EdgeGraph, corrupted: WriterValues, clean: WriterValues, start: int = 0) -> Tensor:
    """a_u(x') - a_u(x) of every writer from position `start` on, [batch, writer, pos - start, d_model], in
    writer order."""
    B = clean.input.shape[0]
    parts = [(corrupted.input - clean.input)[:, None, start:]]
    for l in range(graph.n_layer):
        parts += [(corrupted.heads[l] - clean.heads[l])[:, start:].transpose(1, 2),
                  (corrupted.mlps[l] - clean.mlps[l])[:, None, start:]]
    return torch.cat([p.expand(B, *p.shape[1:]) for p in parts], 1)


def _reader_groups(graph: EdgeGraph) -> list[tuple[str, int, list[int]]]:
    """[(point name, layer, readers)]: the reader inputs as the model exposes them, in forward order. q/k/v
    inputs are [batch, pos, head, d_model] (one reader per head), mlp_in and the final residual [batch, pos, d_model]."""
    L, H, groups = graph.n_layer, graph.n_head, []
    for l in range(L):
        groups += [(get_act_name(f"{c}_input", l), l, [graph.reader(c, l, h) for h in range(H)]) for c in "qkv"]
        groups.append((get_act_name("mlp_in", l), l, [graph.reader("mlp", l)]))
    groups.append((get_act_name("resid_post", L - 1), L, [graph.reader("logits")]))
    return groups


def _edge_terms(graph: EdgeGraph, deltas: Tensor, grads: dict[str, Tensor]) -> Tensor:
    """Per-prompt edge scores [edge, batch]: (a_u(x') - a_u(x)) . the gradient at reader v's input, summed over
    positions and d_model. deltas [batch, writer, pos', d_model], grads [batch, pos', (head,) d_model] per reader
    group (pos': the positions from a shared prefix's end on). One matmul per layer:
    the readers of MLP l and of layer l + 1's q/k/v (then MLP L-1 and the logits) are contiguous, and the writers
    before them are a prefix of the writer order; the one pair that is no edge (MLP l -> itself) is dropped."""
    B, L = deltas.shape[0], graph.n_layer
    dense = deltas.new_zeros(B, graph.n_writers, graph.n_readers)
    flat = deltas.reshape(B, graph.n_writers, -1)  # [batch, writer, pos * d_model]
    groups = _reader_groups(graph)  # per layer l: q, k, v, MLP; then the logits
    first = graph.reader("q", 0, 0)
    for layer in range(L + 1):
        last = graph.reader("logits") + 1 if layer == L else graph.reader("v", layer, graph.n_head - 1) + 1
        writers = graph.n_writers if layer == L else graph.writer("head", layer, 0)  # those that write before
        grad = [grads[name].to(deltas.dtype) for name, _, _ in groups[max(0, 4 * layer - 1):4 * layer + 3]]
        grad = torch.cat([g.transpose(1, 2) if g.dim() == 4 else g[:, None] for g in grad], 1)  # [batch, readers, ...]
        grad = grad.reshape(B, last - first, -1).transpose(1, 2)  # [batch, pos * d_model, readers]
        dense[:, :writers, first:last] = torch.bmm(flat[:, :writers], grad)
        first = last
    return dense[:, graph.edges[:, 0], graph.edges[:, 1]].T


def _summed_metric(model, metric: Callable, final: Tensor, batch: int) -> Tensor:
    """sum of the metric over row blocks of `batch` prompts (one block per interpolation step), from the
    final residual [rows, pos, d_model]: a `Metric` is unembedded only where it reads."""
    return metric_blocks(model, final, metric, batch).sum()


def _reader_grads(model, clean: Tensor, metric: Callable, steps: int = 1, clean_vals=None, corrupt_vals=None,
                  start: int = 0):
    """Gradients of the metric at every reader input on the clean run, [batch, pos - start, (head,) d_model] per
    group (positions from `start`, the end of a shared prefix, on), averaged over `steps` input embeddings on the
    line from the corrupted (input corrupt_vals) to the clean one (alpha = k/steps, k = 1..steps; steps=1 without
    corrupt_vals: the clean run itself).
    -> (grads, the metric [batch] on the first step's inputs, the writers' values there (the clean run's when
    steps=1), the run's cache, with every layer's keys and values when start > 0)."""
    B, groups, L = len(clean), _reader_groups(edge_graph(model)), model.cfg.n_layer
    # Gradients at each head's q, k and v (the fused forward), carried back through W_Q/W_K/W_V and ln1 by hand
    # (`_through_ln1`): the same numbers as at the per-head input copies, without running those copies.
    projected = {name: get_act_name(name.split("_input")[0][-1], layer)
                 for name, layer, _ in groups if name.endswith("_input")}
    names = [projected.get(name, name) for name, _, _ in groups]
    names += [get_act_name("resid_pre", l) for l in range(L) if get_act_name("resid_pre", l) not in names]
    names += [get_act_name(c, l) for l in range(L) for c in "kv"] if start else []  # for a run after the prefix
    # A hook gives mlp_in its own tensor (a copy), so its gradient is the MLP's alone, not resid_mid's.
    fwd = [(get_act_name("mlp_in", l), lambda x, h: None) for l in range(model.cfg.n_layer)]
    if corrupt_vals is not None:
        alpha = torch.arange(1, steps + 1, dtype=clean_vals.input.dtype, device=clean_vals.input.device)
        alpha = alpha.div(steps).repeat_interleave(B)[:, None, None]  # [steps * batch, 1, 1]
        origin, change = corrupt_vals.input.repeat(steps, 1, 1), (clean_vals.input - corrupt_vals.input).repeat(steps, 1, 1)
        fwd.append((get_act_name("resid_pre", 0), lambda x, h: (origin + alpha * change).requires_grad_(True)))
    with torch.enable_grad():
        leaf = [(get_act_name("embed"), lambda x, h: x.detach().requires_grad_(True))]
        final, cache = model.run_with_cache(clean.repeat(steps, 1), names_filter=names + writer_points(L),
                                            fwd_hooks=leaf + fwd, keep_grad=True, stop_at_layer=L)
        total = _summed_metric(model, metric, final, B)
        wanted = [projected.get(name, name) for name, _, _ in groups]
        grads = torch.autograd.grad(total, [cache[n] for n in wanted], allow_unused=True)
    grads = {n: (torch.zeros_like(cache[n]) if g is None else g)[:, start:] for n, g in zip(wanted, grads)}
    for name, point in projected.items():  # [rows, pos, head, d_head] at q/k/v -> [rows, pos, head, d_model]
        layer = int(name.split(".")[1])
        grads[name] = _through_ln1(model, layer, "qkv".index(point[-1]), grads.pop(point),
                                   cache[get_act_name("resid_pre", layer)][:, start:].detach())
    grads = {n: g.view(steps, B, *g.shape[1:]).mean(0) for n, g in grads.items()}
    first = writers_of({n: cache[n][:B] for n in writer_points(L)}, L)
    with torch.no_grad():
        return grads, metric_blocks(model, final[:B].detach(), metric, B)[0], first, cache


def _through_ln1(model, layer: int, which: int, grad: Tensor, resid: Tensor) -> Tensor:
    """The gradient at each head's own pre-LN copy of its query (which=0), key (1) or value (2) input, from the
    gradient at that head's q, k or v [rows, pos, head, d_head] and the stream it reads, resid [rows, pos,
    d_model]: back through W [head, d_model, d_head], then through ln1 (x_hat = (x - mean) / sigma, times w):
    dx = (g - mean(g) - x_hat mean(g x_hat)) / sigma with g = w * (grad W^T) -> [rows, pos, head, d_model]."""
    with torch.no_grad():  # the cached stack (a read under grad would stack all layers afresh)
        W = getattr(model, ("W_Q", "W_K", "W_V")[which])[layer]  # [head, d_model, d_head]
    ln = model.blocks[layer].ln1
    centred = resid - resid.mean(-1, keepdim=True)
    sigma = (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()  # [rows, pos, 1]
    x_hat = (centred / sigma)[:, :, None]  # [rows, pos, 1, d_model]
    g = torch.einsum("bphe,hde->bphd", grad, W) * ln.w.detach()
    return (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True)) / sigma[:, :, None]


def _scores(model, graph, clean_vals, corrupt_vals, grads, clean_m, corrupt_m, metric, method, start=0) -> EdgeScores:
    """EdgeScores from the writers' values on both runs and the gradients at the readers; the writers agree
    before position `start` (a shared prefix), so only later positions are summed."""
    per_prompt = _edge_terms(graph, _deltas(graph, corrupt_vals, clean_vals, start), grads)
    return EdgeScores(scores=per_prompt.mean(1), per_prompt=per_prompt, clean=float(clean_m.mean()),
                      corrupted=float(corrupt_m.mean()), metric=metric_name(metric), graph=graph, method=method)


@torch.no_grad()
def _writers_and_metric(model, tokens: Tensor, metric: Callable) -> tuple[WriterValues, Tensor]:
    """One forward of tokens [batch, pos]: every writer's output and the metric [batch] (unembedded only where
    a `Metric` reads)."""
    L = model.cfg.n_layer
    final, cache = model.run_with_cache(tokens, names_filter=writer_points(L), stop_at_layer=L)
    return writers_of(cache, L), metric_blocks(model, final, metric, len(tokens))[0]


@torch.no_grad()
def _corrupted_after(model, corrupted: Tensor, metric: Callable, start: int, read: int, clean_vals: WriterValues,
                     cache) -> tuple[WriterValues, Tensor]:
    """_writers_and_metric of the corrupted prompts computing only positions `start`.. (the metric reads
    position `read` >= start): before it they equal the clean prompts, so the clean run's keys and values
    (in `cache`) and writers stand in, exactly."""
    L, B = model.cfg.n_layer, len(corrupted)
    embedded = model(corrupted, stop_at_layer=0)[:, start:]  # [batch, pos - start, d_model]
    final, later = model.run_with_cache(embedded, start_at_layer=0, stop_at_layer=L, names_filter=writer_points(L),
                                        past_kv=cached_past(cache, range(L), start, 1))
    later = writers_of(later, L)
    join = lambda before, after: torch.cat([before[:, :start], after], 1)  # noqa: E731
    values = WriterValues(join(clean_vals.input, later.input), tuple(map(join, clean_vals.heads, later.heads)),
                          tuple(map(join, clean_vals.mlps, later.mlps)))
    return values, metric_blocks(model, final[:, read - start:read - start + 1], metric, B, read_only=True)[0]


def eap(model, clean: Tensor, corrupted: Tensor, metric: Callable) -> EdgeScores:
    """Edge attribution patching (Syed et al. 2023; docs/methods.md §3.2, §12.3): every edge scored from one
    forward on the corrupted prompts and one forward and one backward on the clean ones. Noising form:
    score(u -> v) = (a_u(x') - a_u(x)) . dm/d in_v at x. Exact where m is linear in in_v (an edge into the
    logits with the final layer norm's scale frozen)."""
    clean, corrupted = _check_pair(model, clean, corrupted)
    graph, cut = edge_graph(model), shortcuts(model, clean, corrupted, metric)
    start = cut.shared  # before it every writer agrees on both runs: no edge term
    grads, clean_m, clean_vals, cache = _reader_grads(model, clean, metric, start=start)  # forward 1, the backward
    if start and cut.read is not None and cut.read >= start:  # forward 2, on corrupted, from the prefix's end
        corrupt_vals, corrupt_m = _corrupted_after(model, corrupted, metric, start, cut.read, clean_vals, cache)
    else:
        corrupt_vals, corrupt_m = _writers_and_metric(model, corrupted, metric)
    return _scores(model, graph, clean_vals, corrupt_vals, grads, clean_m, corrupt_m, metric, "EAP", start)


def eap_ig(model, clean: Tensor, corrupted: Tensor, metric: Callable, steps: int = 5, on: str = "inputs",
           edges: Tensor | None = None) -> EdgeScores:
    """EAP with integrated gradients (Hanna et al. 2024; docs/methods.md §12.3), `steps` points per path.

    on="inputs": the gradient at each reader averaged over input embeddings x' + (k/steps)(x - x'), k = 1..steps.
    on="activations": each group of readers (the q/k/v inputs of one layer, one MLP input, the logits) in turn
    takes the inputs in_v(x) + (k/steps) S_v, S_v the sum of a_u(x') - a_u(x) over the patched edges u -> v
    (`edges`: a bool mask [n_edges], default all), everything downstream recomputed from the clean run; the
    gradient at those readers is averaged. For one patched edge this is a Riemann sum of the exact change
    when that edge alone is patched (resample), so it converges to exact single-edge patching as steps grow."""
    check_count(steps, "steps", "the number of points on the integration path")
    if on not in ("inputs", "activations"):
        raise ValueError(f"on={on!r}: use 'inputs' (interpolate the input embeddings) or 'activations' "
                         "(interpolate each reader's input)")
    clean, corrupted = _check_pair(model, clean, corrupted)
    graph = edge_graph(model)
    corrupt_vals, corrupt_m = _writers_and_metric(model, corrupted, metric)
    clean_vals, clean_m = _writers_and_metric(model, clean, metric)
    start = shortcuts(model, clean, corrupted, None).shared  # before it every writer agrees: no edge term
    if on == "inputs":
        grads = _reader_grads(model, clean, metric, steps, clean_vals, corrupt_vals, start)[0]
    else:
        grads = _activation_path_grads(model, graph, clean, metric, steps, clean_vals, corrupt_vals, edges, start)
    return _scores(model, graph, clean_vals, corrupt_vals, grads, clean_m, corrupt_m, metric,
                   f"EAP-IG on {on} (steps={steps})", start)


def _activation_path_grads(model, graph, clean, metric, steps, clean_vals, corrupt_vals, edges,
                           start: int = 0) -> dict[str, Tensor]:
    """EAP-IG on activations: for each reader group, the gradient at its readers averaged over the path
    in_v(x) + alpha S_v, the rest of the model clean upstream and recomputed downstream."""
    B, L = len(clean), graph.n_layer
    patched = torch.ones(graph.n_edges, dtype=torch.bool) if edges is None else edges
    mask = graph.dense(patched.cpu()).to(clean_vals.input)  # [writer, reader], on the model's device
    deltas = _deltas(graph, corrupt_vals, clean_vals)  # [batch, writer, pos, d_model]
    starts = [get_act_name("resid_pre", l) for l in range(L)] + [get_act_name("resid_mid", l) for l in range(L)]
    _, cache = model.run_with_cache(clean, names_filter=starts + [get_act_name("resid_post", L - 1)])
    alpha = torch.arange(1, steps + 1, dtype=deltas.dtype, device=deltas.device).div(steps).repeat_interleave(B)
    grads = {}
    for name, layer, readers in _reader_groups(graph):
        shift = torch.einsum("bwpd,wr->bprd", deltas, mask[:, readers]).repeat(steps, 1, 1, 1)  # [steps*B, pos, r, d]
        point = {}

        def along_path(x, h):
            s = shift if x.dim() == 4 else shift[:, :, 0]
            point[h.name] = (x + alpha.view(-1, *[1] * (x.dim() - 1)) * s).detach().requires_grad_(True)
            return point[h.name]

        with torch.enable_grad():
            if layer == L:  # the logits read the final residual
                point[name] = (cache[name].repeat(steps, 1, 1) + alpha[:, None, None] * shift[:, :, 0]).requires_grad_(True)
                final = point[name]
            elif name.endswith("mlp_in"):
                final = model.run_with_hooks(cache[get_act_name("resid_mid", layer)].repeat(steps, 1, 1),
                                             start_at_layer=layer, start_at_mid=True, stop_at_layer=L,
                                             fwd_hooks=[(name, along_path)])
            else:
                final = model.run_with_hooks(cache[get_act_name("resid_pre", layer)].repeat(steps, 1, 1),
                                             start_at_layer=layer, stop_at_layer=L, fwd_hooks=[(name, along_path)])
            (g,) = torch.autograd.grad(_summed_metric(model, metric, final, B), [point[name]])
        grads[name] = g.view(steps, B, *g.shape[1:]).mean(0)[:, start:]
    return grads


# -- circuits and their faithfulness (docs/methods.md §12.3) ----------------------------------------------
def top_edges(scores: Tensor, k: int) -> Tensor:
    """bool [n_edges]: the k edges of largest |score| (ties broken by edge order)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(scores):
        raise ValueError(f"k={k!r}: the number of edges to keep, an int from 0 to the {len(scores)} edges")
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[scores.detach().abs().cpu().argsort(descending=True, stable=True)[:k]] = True
    return keep


def prune(graph: EdgeGraph, keep: Tensor) -> Tensor:
    """bool [n_edges]: the kept edges that lie on a path from the input to the logits through kept edges.
    A writer is reached when it is the input or a kept edge from a reached writer enters one of its readers
    (a head's q, k or v input, an MLP's input); it is useful when a kept edge leaves it for the logits or for a
    reader of a useful component. A dangling edge cannot change the logits, so it is dropped."""
    w_of_reader = graph.reader_owner  # reader -> the writer it belongs to (-1: the logits)
    src, dst = graph.edges[:, 0], graph.edges[:, 1]
    reached = torch.zeros(graph.n_writers, dtype=torch.bool)
    reached[0] = True
    for w in range(1, graph.n_writers):  # writers in topological order
        into = keep & (w_of_reader[dst] == w)
        reached[w] = bool(reached[src[into]].any())
    useful = torch.zeros(graph.n_writers, dtype=torch.bool)
    for w in reversed(range(graph.n_writers)):
        out = keep & (src == w)
        targets = w_of_reader[dst[out]]
        useful[w] = bool((targets == -1).any()) or bool(useful[targets[targets >= 0]].any())
    target_useful = torch.where(w_of_reader[dst] == -1, torch.ones_like(keep), useful[w_of_reader[dst].clamp(min=0)])
    return keep & reached[src] & target_useful


@dataclass(kw_only=True, repr=False)
class CircuitCurve(Result):
    """Faithfulness of circuits (kept edge sets) under one ablation: scores [circuit] = F(C) =
    (m(C) - m(empty)) / (m(G) - m(empty)) on batch means; raw [circuit]: m(C); per_prompt [circuit, prompt];
    clean: m(G) (the clean run); corrupted: m(empty) (every edge patched). Extras: ablation, ks (the k asked
    for), n_edges (edges kept after pruning), circuits bool [circuit, n_edges], complement [circuit]: F of
    each circuit's complement (its edges patched, every other edge kept), graph."""

    axes: tuple = ("circuit",)
    ablation: str
    ks: tuple = ()
    n_edges: Tensor
    circuits: Tensor
    complement: Tensor
    graph: EdgeGraph
    clean_per_prompt: Tensor  # [prompt]: m(G) of each prompt, the per-prompt baselines of an interval
    corrupted_per_prompt: Tensor  # [prompt]: m(empty)
    complement_per_prompt: Tensor  # [circuit, prompt]

    def interval(self, i: int, complement: bool = False, **kwargs):
        """The bootstrap Interval over prompts of F(circuit i) (or of its complement): stats.normalized_interval,
        prompts resampled jointly across m(C), m(G) and m(empty)."""
        from minitx.stats import normalized_interval
        values = (self.complement_per_prompt if complement else self.per_prompt)[i]
        return normalized_interval(values, self.clean_per_prompt, self.corrupted_per_prompt, **kwargs)

    def edges(self, i: int = -1) -> list[str]:
        """The labels of circuit i's edges."""
        return [self.graph.label(int(e)) for e in self.circuits[i].nonzero()[:, 0]]


def _patch_masks(graph: EdgeGraph, circuits: Tensor) -> Tensor:
    """[every edge patched, none, then for each circuit: its outside patched, then its inside patched]."""
    every = torch.ones(1, graph.n_edges, dtype=torch.bool)
    return torch.cat([every, ~every, ~circuits, circuits])


def faithfulness(model, tokens: Tensor, circuits: Tensor, metric: Callable, ablated: WriterValues, *,
                 ks: tuple = (), max_rows: int = 512) -> CircuitCurve:
    """F(C) for each circuit (bool [n, n_edges], True = kept) and for its complement, by exact edge patching of
    `tokens` with the writers' `ablated` values (`minitx.engine.ablation_values`); every circuit and its
    complement run side by side, up to max_rows rows per forward."""
    graph, tokens = edge_graph(model), check_tokens(tokens, model.cfg.d_vocab)
    circuits = circuits[None] if circuits.dim() == 1 else circuits
    values = edge_patching(model, tokens, _patch_masks(graph, circuits), ablated, metric, max_rows=max_rows)
    empty, full, inside, outside = values[0], values[1], values[2:2 + len(circuits)], values[2 + len(circuits):]
    m_empty, m_full = float(empty.mean()), float(full.mean())
    if m_full == m_empty:
        raise ValueError(f"the clean run and the run with every edge patched give the same metric ({m_full:.6g}), so "
                         "F = (m(C) - m(empty)) / (m(G) - m(empty)) is 0/0: the metric does not see the corruption "
                         "(does it read a position before the prompts differ?)")
    normalise = lambda v: (v.mean(-1) - m_empty) / (m_full - m_empty)  # noqa: E731
    return CircuitCurve(scores=normalise(inside), raw=inside.mean(-1), per_prompt=inside, clean=m_full,
                        corrupted=m_empty, metric=metric_name(metric), ablation=ablated.ablation, ks=tuple(ks),
                        n_edges=circuits.sum(1), circuits=circuits, complement=normalise(outside), graph=graph,
                        clean_per_prompt=full, corrupted_per_prompt=empty, complement_per_prompt=outside)


def faithfulness_curve(model, clean: Tensor, scores: EdgeScores, metric: Callable, ks, *, ablation: str,
                       corrupted: Tensor | None = None, reference: Tensor | None = None, pruned: bool = True,
                       max_rows: int = 512) -> CircuitCurve:
    """F(C_k) for the top-k circuits by |score|, k in ks (each pruned to input -> logits paths unless
    pruned=False), and of their complements. ablation: "resample" (needs corrupted=), "mean" (needs reference=)
    or "zero": the values patched edges carry. docs/methods.md §12.3."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation={ablation!r}: use one of {', '.join(ABLATIONS)} (always name it: the circuit "
                         "found depends on it)")
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks:
        raise ValueError("ks is empty: give the circuit sizes (numbers of edges) to evaluate")
    graph = scores.graph
    circuits = torch.stack([top_edges(scores.scores, k) for k in ks])
    if pruned:
        circuits = torch.stack([prune(graph, c) for c in circuits])
    ablated = ablation_values(model, ablation, clean, corrupted=corrupted, reference=reference)
    return faithfulness(model, clean, circuits, metric, ablated, ks=tuple(ks), max_rows=max_rows)
