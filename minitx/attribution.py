"""Attribution patching (AtP): activation patching's first-order Taylor approximation, and AtP*'s QK fix.

    est = attribution_patching(model, clean, corrupted, metric)          # 2 forwards + 1 backward
    est.scores["z"]          # [layer, head] estimated change of the batch-mean metric
    est.by_pos["z"]          # [layer, pos, head]
    est.normalized("z")      # / (clean - corrupted): comparable to activation_patching(...).scores
    fixed = atp_star_qk_fix(model, clean, corrupted, metric)
    compare_with_patching(est.normalized("z"), exact.scores)             # pearson, spearman, sign, top-k

Direction: DENOISING, as Nanda's demo and TransformerLens 4.3 `attribution_patching`: for a node n,
    c_hat(n) = (a_n(clean) - a_n(corrupted)) . dm/da_n, the gradient taken on the CORRUPTED run,
an estimate of m(corrupted with n := clean) - m(corrupted). Dividing by (m_clean - m_corrupted)
gives the normalised patching score's estimate (1 = clean behaviour, 0 = corrupted). The metric is
any callable logits [batch, pos, d_vocab] -> [batch] (e.g. a `minitx.metrics` Metric); its batch
mean is differentiated, so estimates are of batch means, as activation patching's scores are.

Why a QK fix. When a later head's softmax is saturated, dm/d(scores) is ~0 although patching would
move that attention a lot: AtP reports ~0 for a previous-token head whose whole effect goes through
a later induction head's KEYS (docs/methods.md §3.1, §9.2-9.3). AtP* (Kramar et al. 2024) recomputes the
softmax exactly and keeps the linear approximation only from the attention pattern onwards:
    c_hat(k) = sum_{q,k} (A_patched - A) . dm/dA.
`atp_star_qk_fix` applies this in two places:
  * to each head's own query and key nodes ("q", "k": the paper's fix; [layer, head]);
  * to head OUTPUTS ("z"), through their direct edges into later heads' queries and keys. The AtP
    estimate of a head output is, by the chain rule, a sum over the nodes that read it (the residual
    stream is a sum, so every later q/k/v input, MLP input and the final LN reads it directly). For
    every later receiver head, the term that goes through its query (key) is replaced: plain AtP's term
    d . dm/d(k input), the gradient taken at the receiver's own pre-LN copy of its key (query) input
    (`hook_k_input`, so it holds exactly that path, its layer norm linearised), is subtracted, and the
    exact-softmax term sum (A(x + d) - A) . dm/dA is added, where d is the sender's output change
    (o_clean - o_corrupted, all positions) added to that copy. The model recomputes the receiver's ln1
    on it, so no layer-norm scale is frozen (exact LN; one single-layer forward per receiver layer and
    q/k, all senders side by side along the batch axis).
What stays linear: paths from a sender through an intermediate node's query/key (sender -> v of a
middle head -> key of a later head), the value paths, and everything after each pattern. GradDrop,
AtP*'s other fix (cancellation between paths), is not implemented.

Definitions and identities: docs/methods.md §3. References: Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale" (blog);
Kramar, Lieberum, Shah, Nanda 2024, "AtP*: An efficient and scalable method for localizing LLM
behaviour to components" (arXiv:2403.00745): the QK fix for attention saturation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from minitx.checks import check_count, check_tokens
from minitx.engine import HEAD_LIKE, RESID_LIKE, check_metric_values, check_same_shape
from minitx.hooks import get_act_name
from minitx.metrics import metric_name
from minitx.results import Result

__all__ = ["AttributionResult", "attribution_patching", "atp_star_qk_fix", "compare_with_patching"]


@dataclass(kw_only=True, repr=False)
class AttributionResult(Result):
    """Estimated changes of the batch-mean metric when a node is patched from clean into corrupted.

    scores: point -> [layer, head] (head points) or [layer] (residual-stream points), the estimates;
    axes: point -> the names of its scores' axes; per_prompt: point -> [*axes, batch], each prompt's own
    estimate (the batch mean of per_prompt is scores); clean/corrupted: the batch-mean metric on each
    run (clean_per_prompt/corrupted_per_prompt [batch]). Extras: by_pos, point -> [layer, pos, head] or
    [layer, pos] (the pattern's pos is q_pos); method "AtP" or "AtP* QK fix"; direction "denoising"."""

    scores: dict[str, Tensor]
    axes: dict = field(default_factory=dict)
    by_pos: dict[str, Tensor] = field(default_factory=dict)
    method: str = "AtP"
    direction: str = "denoising"
    clean_per_prompt: Tensor | None = None
    corrupted_per_prompt: Tensor | None = None
    # atp_star_qk_fix only: sender (layer, head) -> receiver (layer, head) through its q (0) or k (1).
    edges: Tensor | None = None  # [layer, head, layer, head, 2] exact-softmax estimates (0 where not later)
    edges_linear: Tensor | None = None  # the same edges as plain AtP counts them (linear in q/k)
    plain: dict[str, Tensor] = field(default_factory=dict)  # the uncorrected AtP [layer, head] scores

    def normalized(self, point: str = "z") -> Tensor:
        """Returns scores[point] / (clean - corrupted): the estimate of the normalised denoising score."""
        return self.scores[point] / (self.clean - self.corrupted)


def _check_inputs(model, clean_tokens: Tensor, corrupted_tokens: Tensor, points) -> tuple[Tensor, Tensor]:
    clean, corrupted = check_tokens(clean_tokens, model.cfg.d_vocab), check_tokens(corrupted_tokens, model.cfg.d_vocab)
    check_same_shape(clean, corrupted)
    for point in points:
        if point not in HEAD_LIKE + RESID_LIKE:
            raise ValueError(f"unknown point {point!r}; allowed: {', '.join(HEAD_LIKE + RESID_LIKE)}")
    return clean, corrupted


def _runs(model, clean: Tensor, corrupted: Tensor, metric: Callable, names: list[str], grad_names: list[str]):
    """The two forwards and one backward every estimate here needs.

    Returns (clean cache of names, corrupted cache of names (detached), {name:
    d mean(metric) / d activation} for grad_names, m_clean [batch], m_corrupted [batch]). The corrupted run caches with keep_grad and
    differentiates with autograd.grad, so parameters' .grad are never touched. Its graph is rooted at
    a leaf made from hook_embed (the weights may not require grad); nothing else is detached, so the
    gradient at an early point still flows through every later one."""
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean, names_filter=names)
        m_clean = check_metric_values(metric(clean_logits), len(clean))
    with torch.enable_grad():
        leaf = [("hook_embed", lambda x, hook: x.detach().requires_grad_(True))]
        extra = [n for n in grad_names if n not in names]  # gradients only: the clean run need not cache them
        logits, cache = model.run_with_cache(corrupted, names_filter=names + extra, fwd_hooks=leaf, keep_grad=True)
        m_corr = check_metric_values(metric(logits), len(corrupted))
        if not m_corr.requires_grad:
            raise ValueError("the metric must be differentiable in the logits: its value on the corrupted run "
                             "carries no gradient (an argmax, a comparison, .item() or .detach() inside?)")
        grads = torch.autograd.grad(m_corr.mean(), [cache[n] for n in grad_names], allow_unused=True)
    grads = {n: torch.zeros_like(cache[n]) if g is None else g for n, g in zip(grad_names, grads)}
    corr_cache = {n: x.detach() for n, x in cache.items() if n not in extra}  # extra: only their gradients
    return clean_cache, corr_cache, grads, m_clean.detach(), m_corr.detach()


def _contract(point: str, delta_times_grad: Tensor) -> Tensor:
    """Elementwise (a_clean - a_corr) * grad of one layer -> by-position scores per prompt.
    [batch, pos, head, d] -> [batch, pos, head]; pattern [batch, head, q, k] -> [batch, q, head];
    [batch, pos, d] -> [batch, pos]."""
    if point == "pattern":
        return delta_times_grad.sum(3).transpose(1, 2)
    return delta_times_grad.sum(-1)


def _atp_per_prompt(points, n_layer: int, clean_cache, corr_cache, grads) -> dict[str, Tensor]:
    """{point: [layer, batch, pos, head] or [layer, batch, pos]} AtP terms from the caches and gradients of
    `_runs` (the gradient is of the batch MEAN, so summing over the batch gives the estimate of the mean)."""
    def layer(p, l):
        n = get_act_name(p, l)
        return _contract(p, (clean_cache[n] - corr_cache[n]) * grads[n])
    return {p: torch.stack([layer(p, l) for l in range(n_layer)]) for p in points}


def attribution_patching(model, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Callable,
                         points=("z",)) -> AttributionResult:
    """Returns AttributionResult: scores [layer, head] and by_pos [layer, pos, head] per head point.
    Nanda 2023, "Attribution Patching" (denoising form; gradient on the corrupted run).

    points: head points "z", "q", "k", "v" (by_pos [layer, pos, head]), "pattern" (by_pos
    [layer, q_pos, head]), or residual-stream points "resid_pre", "resid_mid", "resid_post",
    "attn_out", "mlp_out" (scores [layer], by_pos [layer, pos]). Cost: 2 forwards + 1 backward for
    every node at once. Exact when the metric is linear in the node along the patch (e.g. last-layer
    head outputs, a logit difference, ln_final's scale frozen); a poor guide for big activations
    (the residual stream) and for nodes acting through a saturated softmax (see atp_star_qk_fix)."""
    points = (points,) if isinstance(points, str) else tuple(points)
    if not points:
        raise ValueError(f"points is empty: name at least one point to estimate, from "
                         f"{', '.join(HEAD_LIKE + RESID_LIKE)}")
    clean, corrupted = _check_inputs(model, clean_tokens, corrupted_tokens, points)
    L, B = model.cfg.n_layer, len(clean)
    names = [get_act_name(p, l) for p in points for l in range(L)]
    clean_cache, corr_cache, grads, m_clean, m_corr = _runs(model, clean, corrupted, metric, names, names)
    terms = _atp_per_prompt(points, L, clean_cache, corr_cache, grads)  # [layer, batch, pos, ...]
    by_pos = {p: v.sum(1) for p, v in terms.items()}
    per_prompt = {p: B * v.sum(2).movedim(1, -1) for p, v in terms.items()}  # [layer, (head,) batch]
    return AttributionResult(scores={p: v.sum(1) for p, v in by_pos.items()}, by_pos=by_pos, per_prompt=per_prompt,
                             axes={p: ("layer",) if p in RESID_LIKE else ("layer", "head") for p in points},
                             clean=float(m_clean.mean()), corrupted=float(m_corr.mean()), metric=metric_name(metric),
                             method="AtP", clean_per_prompt=m_clean, corrupted_per_prompt=m_corr)


class _Stop(Exception):
    pass


def _pattern_of(model, resid: Tensor, layer: int, hooks: list) -> Tensor:
    """Runs block `layer` alone on resid [rows, pos, d_model] with hooks, stopping at its pattern;
    -> pattern [rows, head, q_pos, k_pos]."""
    seen = {}

    def stop(x, hook):
        seen[hook.name] = x
        raise _Stop  # nothing after the pattern is needed (nor the unembedding)

    pattern = get_act_name("pattern", layer)
    try:
        model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[*hooks, (pattern, stop)])
    except _Stop:
        return seen[pattern]
    raise RuntimeError(f"{pattern} never fired")


def _exact_minus_base(pattern: Tensor, layer: int, corr: dict, grads: dict, batch: int) -> Tensor:
    """AtP*'s exact-softmax term sum_{q,k} (A_patched - A) . dm/dA of patched patterns [n * batch, head, q, k]
    of one layer -> [n, head]."""
    name = get_act_name("pattern", layer)
    term = (pattern.view(-1, batch, *pattern.shape[1:]) - corr[name]) * grads[name]
    return term.sum((1, 3, 4))


def _qk_nodes(model, clean_cache, corr, grads, batch: int) -> dict[str, Tensor]:
    """The paper's fix on the q/k nodes themselves: {"q", "k": [layer, head]}, all heads of a layer at once
    (each head's pattern depends on its own q and k only): one single-layer forward per layer and kind."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    node = {p: torch.zeros(L, H, dtype=corr[get_act_name("resid_pre", 0)].dtype) for p in ("q", "k")}
    for l in range(L):
        for p in ("q", "k"):
            source = clean_cache[get_act_name(p, l)]
            pattern = _pattern_of(model, corr[get_act_name("resid_pre", l)], l,
                                  [(get_act_name(p, l), lambda x, hook, s=source: s)])
            node[p][l] = _exact_minus_base(pattern, l, corr, grads, batch)[0]
    return node


def _edge_plan(n_layer: int, n_head: int, batch: int, max_rows: int) -> list[tuple[int, list]]:
    """[(receiver layer r, senders [(layer, head)] run side by side)]: every head of a layer before r, in
    chunks of at most max_rows rows (senders x batch)."""
    per_chunk = max(1, max_rows // batch)
    plan = []
    for r in range(1, n_layer):
        senders = [(l, h) for l in range(r) for h in range(n_head)]
        plan += [(r, senders[i:i + per_chunk]) for i in range(0, len(senders), per_chunk)]
    return plan


def _qk_edges(model, clean_cache, corr, grads, batch: int, max_rows: int) -> tuple[Tensor, Tensor]:
    """Head outputs through their direct edges into later heads' queries and keys (module docstring):
    -> (exact-softmax estimates, plain AtP's linear terms), each [layer, head, layer, head, 2]."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    dtype = corr[get_act_name("resid_pre", 0)].dtype
    edges, edges_linear = torch.zeros(L, H, L, H, 2, dtype=dtype), torch.zeros(L, H, L, H, 2, dtype=dtype)
    for r, chunk in _edge_plan(L, H, batch, max_rows):
        delta = torch.cat([(clean_cache[get_act_name("result", l)] - corr[get_act_name("result", l)])[:, :, h]
                           for l, h in chunk])  # [n * batch, pos, d_model]

        def add(x, hook, d=delta):  # x: [n * batch, pos, head, d_model], every receiver head's own copy
            return x + d[:, :, None, :]

        resid = corr[get_act_name("resid_pre", r)].repeat(len(chunk), 1, 1)  # [n * batch, pos, d_model]
        for i, p in enumerate(("q", "k")):
            copy = get_act_name(f"{p}_input", r)
            exact = _exact_minus_base(_pattern_of(model, resid, r, [(copy, add)]), r, corr, grads, batch)  # [n, head]
            linear = torch.einsum("nbpd,bpgd->ng", delta.view(len(chunk), batch, *delta.shape[1:]), grads[copy])
            for j, (l, h) in enumerate(chunk):
                edges[l, h, r, :, i] = exact[j]
                edges_linear[l, h, r, :, i] = linear[j]
    return edges, edges_linear


@torch.no_grad()
def atp_star_qk_fix(model, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Callable,
                    max_rows: int = 512) -> AttributionResult:
    """Returns AttributionResult with scores "z", "q", "k" [layer, head], QK-fixed; edges [layer, head, layer, head, 2].
    Kramar et al. 2024, "AtP*" (arXiv:2403.00745), the QK fix; denoising form, as attribution_patching.

    "q"/"k": each head's query (key) at all positions set to its clean value; its pattern recomputed
    exactly (one single-layer forward per layer), the rest linear: sum (A_patched - A) . dm/dA.
    "z": plain AtP of the head's output, with each direct edge into a later head's query or key
    replaced by its exact-softmax estimate (module docstring). `plain` holds the uncorrected AtP
    scores; `edges`/`edges_linear` the corrected and uncorrected edge terms, so that
    scores["z"] = plain["z"] + (edges - edges_linear).sum((2, 3, 4)).
    Cost: 2 forwards + 1 backward, plus per layer 2 single-layer forwards for the q/k nodes and
    2 per later layer over (earlier heads x batch) rows, chunked to at most max_rows rows."""
    check_count(max_rows, "max_rows", "the most rows (senders x batch) one forward may hold")
    clean, corrupted = _check_inputs(model, clean_tokens, corrupted_tokens, ())
    L, B = model.cfg.n_layer, len(clean)
    names = [get_act_name(p, l) for l in range(L) for p in ("z", "q", "k", "pattern", "result", "resid_pre")]
    grad_names = [get_act_name(p, l) for l in range(L) for p in ("z", "q", "k", "pattern")]
    # The gradient at each receiver head's own copy of its query (key) input is what plain AtP's chain
    # rule sends through that head's query (key): the term an edge's exact estimate replaces.
    grad_names += [get_act_name(f"{p}_input", r) for r in range(1, L) for p in ("q", "k")]
    with torch.enable_grad():
        clean_cache, corr, grads, m_clean, m_corr = _runs(model, clean, corrupted, metric, names, grad_names)
    plain = {p: v.sum((1, 2)) for p, v in _atp_per_prompt(("z", "q", "k"), L, clean_cache, corr, grads).items()}
    node = _qk_nodes(model, clean_cache, corr, grads, B)
    edges, edges_linear = _qk_edges(model, clean_cache, corr, grads, B, max_rows)
    z = plain["z"] + (edges - edges_linear).sum((2, 3, 4))
    return AttributionResult(scores={"z": z, **node}, axes={p: ("layer", "head") for p in ("z", "q", "k")},
                             clean=float(m_clean.mean()), corrupted=float(m_corr.mean()), metric=metric_name(metric),
                             method="AtP* QK fix", clean_per_prompt=m_clean, corrupted_per_prompt=m_corr,
                             edges=edges, edges_linear=edges_linear, plain=plain)


def _ranks(x: Tensor) -> Tensor:
    """0-based ranks of a 1-d tensor, ties sharing their mean rank (as scipy.stats.rankdata - 1)."""
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    _, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(int(inverse.max()) + 1, dtype=x.dtype).index_add_(0, inverse, ranks)
    return (sums / torch.bincount(inverse).to(x.dtype))[inverse]


def _pearson(a: Tensor, b: Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def compare_with_patching(estimates: Tensor, exact: Tensor, k: int = 5, min_abs: float = 1e-6) -> dict:
    """Returns {"pearson", "spearman", "sign_agreement", "top_k_overlap", "n"} over the flattened entries.
    Kramar et al. 2024 (AtP*) compare AtP to activation patching by correlation and top-k recovery.

    estimates, exact: tensors of one shape on one scale (e.g. `AttributionResult.normalized("z")`
    and `activation_patching(..., "z", by="all").scores`, both denoising). sign_agreement: the
    fraction of entries with |exact| > min_abs whose estimate has the same sign (NaN if none).
    top_k_overlap: |top-k by |estimate|  intersect  top-k by |exact|| / k. Correlations are NaN when
    either side is constant."""
    check_count(k, "k", "how many of the largest entries the top-k overlap compares")
    if estimates.shape != exact.shape:
        raise ValueError(f"estimates {tuple(estimates.shape)} and exact {tuple(exact.shape)} must have one shape")
    a, b = estimates.detach().reshape(-1).double().cpu(), exact.detach().reshape(-1).double().cpu()
    k = min(k, len(a))
    big = b.abs() > min_abs
    sign = float((a[big].sign() == b[big].sign()).double().mean()) if bool(big.any()) else float("nan")
    top_a, top_b = set(a.abs().topk(k).indices.tolist()), set(b.abs().topk(k).indices.tolist())
    return {"pearson": _pearson(a, b), "spearman": _pearson(_ranks(a), _ranks(b)), "sign_agreement": sign,
            "top_k_overlap": len(top_a & top_b) / k if k else float("nan"), "n": len(a)}
