"""Activation patching, denoising and noising, swept over layers, positions and heads.

Returns PatchingResult scores in TransformerLens's axis order: [layer, pos], [layer], [layer, head],
[layer, pos, head]. Score = (patched - corrupted) / (clean - corrupted) on batch means, in both
directions: 1 = clean behaviour, 0 = corrupted behaviour (docs/methods.md §1).

Methods: Meng et al. 2022 (ROME causal tracing: Gaussian noise on the subject embeddings, restored
one site at a time); Zhang & Nanda 2023 (best practices: token-replacement corruptions, logit
difference, normalisation); Heimersheim & Nanda 2024 (denoising = sufficiency, noising = necessity;
they are not mirror images). Mean ablation follows Wang et al. 2022; resample ablation Chan et al. 2022.

Sweeps are batched: for layer l, every patch of that layer runs in one forward of
(n_patches x batch) rows that starts from the cached residual stream before block l
(`start_at_layer=l`), with one hook writing patch i into row block i. Causality trims the rest, and
`sweep_plan` decides how, in one place (a `SweepPlan`, built on `minitx.engine.Shortcuts`): a
per-position patch at p runs positions p.. only, reading earlier keys and values from the base run's
cache (`past_kv`); a z, q or post-attention patch runs layer l at p alone; an all-position patch of
z, attn_out or resid_mid starts after layer l's attention (`start_at_mid`); and a
`minitx.metrics.Metric` reading position R stops at R, running the last block and the unembedding
there only (`keep_last=1`). `patch_one` is the one-forward-per-patch definition the sweeps are
tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from minitx.checks import check_count, check_index, check_integers, check_positions, check_tokens
from minitx.engine import (DIRECTIONS, HEAD_LIKE, RESID_LIKE, Corruption, Shortcuts, cached_past,  # noqa: F401
                           check_same_shape, metric_blocks, position_mask, shortcuts, token_batch)
from minitx.hooks import get_act_name
from minitx.metrics import metric_name, normalized
from minitx.model import point_names
from minitx.results import Result

LOCAL = ("z", "q", "attn_out", "resid_mid", "mlp_out", "resid_post")  # a patch at p moves layer l at p only
AFTER_QKV = ("z", "pattern", "attn_out", "resid_mid", "mlp_out", "resid_post")  # keep_last=1 cuts these
FROM_MID = ("z", "attn_out", "resid_mid")  # all-position patches that change nothing before l's attention output


@dataclass(kw_only=True, repr=False)
class PatchingResult(Result):
    """scores: normalised [*axes]; raw: batch-mean metric [*axes]; per_prompt [*axes, batch]; clean/corrupted:
    the baselines' batch means (clean_per_prompt/corrupted_per_prompt [batch]: per prompt). Extras: the
    direction ("denoising" or "noising"), the patched point, and the normalisation used."""

    direction: str
    point: str = ""
    clean_per_prompt: Tensor | None = None
    corrupted_per_prompt: Tensor | None = None
    normalization: str = "(patched - corrupted) / (clean - corrupted), ratio of batch means"


# -- corruptions --------------------------------------------------------------------------------
def gaussian_noise_embeddings(model, tokens: Tensor, positions, std_factor: float = 3.0, seed: int = 0,
                              reference_tokens: Tensor | None = None) -> Corruption:
    """Returns a Corruption: `tokens` with N(0, std^2) noise added to hook_embed at `positions`.

    Meng et al. 2022 (ROME) causal tracing: std = std_factor (3) x the std of the token embeddings over
    a text set, here the embeddings of `reference_tokens` (default: `tokens` themselves), not all of W_E,
    whose unused rows (never trained, or zero in a small model) would shrink it. Off-distribution
    (Zhang & Nanda 2023); prefer token replacement."""
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    if isinstance(std_factor, bool) or not isinstance(std_factor, (int, float)) or not 0 < std_factor < math.inf:
        raise ValueError(f"std_factor={std_factor!r}: the noise std in units of the embeddings' std, a finite number > 0")
    mask = position_mask(positions, *tokens.shape)
    reference = tokens if reference_tokens is None else check_tokens(reference_tokens, model.cfg.d_vocab)
    std = std_factor * float(model.W_E.detach()[reference.reshape(-1).to(model.W_E.device)].float().std())
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(*tokens.shape, model.cfg.d_model, generator=g) * std * mask[..., None]
    noise = noise.to(model.W_E.dtype).to(model.W_E.device)
    return Corruption(tokens, (("hook_embed", lambda x, hook: x + noise),), name=f"gaussian_noise(std={std:.3g})")


@torch.no_grad()
def mean_ablation(model, reference_tokens: Tensor, batch_size: int = 32) -> Corruption:
    """Returns a Corruption holding every point's mean over the reference prompts, [1, pos, ...].

    Wang et al. 2022 mean-ablate over p_ABC (per template: call this once per template). Noising only;
    its corrupted baseline is the run from the mean residual stream before block 0."""
    check_count(batch_size, "batch_size", "the most reference prompts one forward may hold")
    ref = token_batch(reference_tokens)
    names = [n for n in point_names(model.cfg.n_layer, include_on_request=False) if not n.endswith("attn_scores")]
    sums: dict[str, Tensor] = {}

    def add(x, hook):
        sums[hook.name] = sums.get(hook.name, 0) + x.double().sum(0, keepdim=True)

    for chunk in ref.split(batch_size):
        model.run_with_hooks(chunk, fwd_hooks=[(names, add)])
    values = {k: (v / len(ref)).to(model.W_E.dtype) for k, v in sums.items()}
    return Corruption(None, values=values, name=f"mean_ablation(n={len(ref)})")


def resample_ablation(tokens: Tensor, reference_tokens: Tensor | None = None, seed: int = 0) -> Tensor:
    """Returns corrupted tokens [batch, pos]: each prompt paired with a different prompt of the batch
    (a random cyclic derangement), or with a random row of `reference_tokens` (Chan et al. 2022)."""
    tokens, g = token_batch(tokens), torch.Generator().manual_seed(seed)
    if reference_tokens is not None:
        ref = token_batch(reference_tokens)
        check_same_shape(tokens, ref[:1].expand(len(tokens), -1))
        return ref[torch.randint(len(ref), (len(tokens),), generator=g)].clone()
    if len(tokens) < 2:
        raise ValueError("resampling within the batch needs at least 2 prompts; pass reference_tokens")
    order = torch.randperm(len(tokens), generator=g)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return tokens[partner].clone()


# -- the plan: what the exact shortcuts allow for one sweep ------------------------------------
@dataclass(frozen=True)
class SweepPlan:
    """Where each patched forward of a sweep starts and stops: every shortcut is decided here, as data.

    cut: the engine's Shortcuts for this pair and metric (shared prefix, read position, keep_last).
    suffix: forwards start at a position p > 0 (the patch's own when by="pos", else the end of the
        shared prefix) and read earlier positions' keys and values from the base run's cache.
    local: a patch at p changes layer l at p only (z, q, or after the attention), so layer l runs p alone.
    from_mid: all-position patches of z, attn_out or resid_mid start after layer l's attention."""

    point: str
    by: str
    cut: Shortcuts
    suffix: bool
    local: bool
    from_mid: bool

    def start(self, site: tuple) -> int:
        """The first position the forward of a patch at site = (layer, result index, activation index) computes."""
        return site[1][1] if self.by == "pos" and self.suffix else self.cut.shared

    def changes_nothing(self, start: int) -> bool:
        """True for patches whose forwards would start after the read position, or (by position) inside the
        shared prefix, where clean and corrupted hold the same values: their value is the base run's."""
        return start >= self.cut.n_pos or (self.by == "pos" and start < self.cut.shared)

    def source_at_read_only(self, layer: int, n_layer: int) -> bool:
        """keep_last=1 runs the last block's points after q/k/v at the read position only: cut the source too."""
        return (bool(self.cut.keep) and layer == n_layer - 1 and self.point in AFTER_QKV
                and not (self.local or self.from_mid))

    def cached_names(self, n_layer: int) -> list[str]:
        """The points the clean and corrupted baseline runs must cache for this plan."""
        names = {get_act_name(self.point, l) for l in range(n_layer)} | set(_resid_names(n_layer))
        if self.suffix:
            names |= {get_act_name(kind, l) for l in range(n_layer) for kind in "kv"}
        if self.from_mid:
            names |= {get_act_name("resid_mid", l) for l in range(n_layer)}
        return sorted(names)


def sweep_plan(model, clean: Tensor, corrupted, metric: Callable | None, point: str, by: str) -> SweepPlan:
    """The SweepPlan for patching `point` by `by` between clean tokens and a corruption, under `metric`.

    A patch at position p changes nothing before p (causal attention), so per-position sweeps run only
    positions p.. Before the first position where the prompts differ (`shared`), both runs hold the same
    values: a patch there changes nothing at all, and an all-position patch acts from `shared` on.
    Patches of z, attn_out or resid_mid at every position change nothing before layer l's attention
    output, so they start there. None of this under context hooks (engine.shortcuts)."""
    cut = shortcuts(model, clean, corrupted, metric)
    suffix = cut.exact_positions and clean.shape[1] > 1 and (by == "pos" or cut.shared > 0)
    local = by == "pos" and suffix and point in LOCAL
    from_mid = cut.exact_positions and by == "all" and cut.shared == 0 and point in FROM_MID
    return SweepPlan(point, by, cut, suffix, local, from_mid)


# -- activation patching ----------------------------------------------------------------------------
def act_index(point: str, pos: int | None = None, head: int | None = None) -> tuple:
    """Index into a point's activation after its batch axis: e.g. z at (pos, head) -> (pos, head)."""
    if point in RESID_LIKE:
        if head is not None:
            raise ValueError(f"{point} has no head axis; patch z/q/k/v/pattern for heads")
        return () if pos is None else (pos,)
    if point not in HEAD_LIKE:
        raise ValueError(f"unknown patch point {point!r}; allowed: {', '.join(RESID_LIKE + HEAD_LIKE)}")
    if head is None:
        raise ValueError(f"{point} is per head: give head=")
    if point == "pattern":
        if pos is not None:
            raise ValueError("pattern patching is all positions only ([layer, head]); "
                             "per-destination is not implemented")
        return (head,)
    return (slice(None), head) if pos is None else (pos, head)


def _sites(point: str, by: str, L: int, T: int, H: int):
    """-> axes, [(layer, result index, activation index)] in TL axis order."""
    if by not in ("pos", "all"):
        raise ValueError(f"by={by!r}: use 'pos' (per position) or 'all' (all positions at once)")
    if point in RESID_LIKE:
        if by == "all":
            return ("layer",), [(l, (l,), act_index(point)) for l in range(L)]
        return ("layer", "pos"), [(l, (l, p), act_index(point, p)) for l in range(L) for p in range(T)]
    act_index(point, None if by == "all" else 0, 0)  # validates the point / pattern-by-pos
    if by == "all":
        return ("layer", "head"), [(l, (l, h), act_index(point, None, h)) for l in range(L) for h in range(H)]
    return ("layer", "pos", "head"), [(l, (l, p, h), (p, h)) for l in range(L) for p in range(T) for h in range(H)]


def _prepare(model, clean, corrupted, direction):
    clean, corrupted = _as_corruption(clean), _as_corruption(corrupted)
    if clean.tokens is None or clean.fwd_hooks:
        raise ValueError("clean must be plain tokens [batch, pos]")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: use 'denoising' (run corrupted, patch in clean) or "
                         "'noising' (run clean, patch in corrupted)")
    if corrupted.tokens is None and direction == "denoising":
        raise ValueError(f"{corrupted.name} has no corrupted prompt to run; use direction='noising'")
    for name, _ in corrupted.fwd_hooks:
        if name not in ("hook_embed", "hook_pos_embed"):
            raise ValueError(f"a corruption's hooks may touch only hook_embed/hook_pos_embed, not {name}")
    check_same_shape(clean.tokens, corrupted)
    return clean, corrupted


def _run(model, c: Corruption, names: list[str], metric: Callable, batch: int):
    """-> metric values [batch], cache (values expanded to the batch) of a clean or corrupted input."""
    L = model.cfg.n_layer
    if c.tokens is not None:
        final, cache = model.run_with_cache(c.tokens, names_filter=names, fwd_hooks=list(c.fwd_hooks), stop_at_layer=L)
    else:
        cache = {n: c.values[n].expand(batch, *c.values[n].shape[1:]) for n in names}
        final = model(cache[get_act_name("resid_pre", 0)], start_at_layer=0, stop_at_layer=L)
    return metric_blocks(model, final, metric, batch)[0], cache


def _resid_names(n_layer: int) -> list[str]:
    """resid_pre of every layer, then the last layer's resid_post: the residual before block l is [l]."""
    return [get_act_name("resid_pre", l) for l in range(n_layer)] + [get_act_name("resid_post", n_layer - 1)]


def _positions(x: Tensor, point: str, first: int, end: int | None = None) -> Tensor:
    """An activation cut to positions first..end-1: the query axis of a pattern (its keys: 0..end-1)."""
    return x[:, :, first:end, :end] if point == "pattern" else x[:, first:end]


def _patched_final(model, base, l: int, p: int, n_pos: int, keep, n: int, B: int, hook, local: bool) -> Tensor:
    """The final residual of n experiments (row blocks of B), each patched by `hook` at layer l, run over
    positions p..n_pos-1 from the base cache: [n * B, n_pos or keep, d_model].
    local: the patched point changes layer l only at position p (z, q, or after the attention), so layer l
    runs that one position and later positions take the base run's resid_post."""
    L, resid = model.cfg.n_layer, _resid_names(model.cfg.n_layer)

    def rows(name, a, b):
        return base[name][:, a:b].repeat(n, 1, 1)

    if local:
        at_p = model.run_with_hooks(rows(resid[l], p, p + 1), start_at_layer=l, stop_at_layer=l + 1,
                                    past_kv=cached_past(base, [l], p, n), fwd_hooks=[hook])
        after = torch.cat([at_p, rows(resid[l + 1], p + 1, n_pos)], 1)  # resid_post of layer l, positions p..
        if l == L - 1:  # layer l was the last: `after` is the final residual
            final = after[:, -keep:] if keep else after
        else:
            final = model(after, start_at_layer=l + 1, stop_at_layer=L, past_kv=cached_past(base, range(l + 1, L), p, n), keep_last=keep)
    else:
        final = model.run_with_hooks(rows(resid[l], p, n_pos), start_at_layer=l, stop_at_layer=L,
                                     past_kv=cached_past(base, range(l, L), p, n), keep_last=keep, fwd_hooks=[hook])
    if p and not keep:  # earlier positions are the base run's, untouched by the patch
        final = torch.cat([rows(resid[L], 0, p), final], 1)
    return final


def _patched_mid(base, mid_name: str, name: str, source: Tensor, indices: list[tuple], B: int, W_O) -> Tensor:
    """resid_mid of one layer for n all-position patches [n * B, pos, d_model]: the base run's plus, in row
    block i, what patch i changes: source - base of attn_out or resid_mid, or a head's z difference
    through that layer's W_O [head, d_head, d_model] (attn_out is b_O + the sum of z_h W_O[h])."""
    n_pos = source.shape[1]  # the source is already cut to the positions run
    mid = base[mid_name][:, :n_pos].repeat(len(indices), 1, 1)
    change = source - base[name][:, :n_pos]
    for i, idx in enumerate(indices):
        rows = slice(i * B, (i + 1) * B)
        mid[rows] += change if W_O is None else change[:, :, idx[1]] @ W_O[idx[1]]
    return mid


def _writer(indices: list[tuple], source: Tensor, batch: int) -> Callable:
    """Hook writing source[:, idx_i] into row block i of the activation, for each patch i."""
    def hook(x, _):
        y = x.reshape(len(indices), batch, *x.shape[1:]).clone()
        for i, idx in enumerate(indices):
            y[(i, slice(None), *idx)] = source[(slice(None), *idx)]
        return y.reshape(x.shape)
    return hook


def _patched_values(model, plan: SweepPlan, base, l: int, p: int, chunk: list, source: Tensor, B: int,
                    metric: Callable, W_O: Tensor | None) -> Tensor:
    """Metric values [len(chunk), batch] of the chunk's patches of layer l, their forwards starting at p."""
    L, keep, name = model.cfg.n_layer, plan.cut.keep, get_act_name(plan.point, l)
    indices = [idx for _, _, idx in chunk]
    if plan.from_mid:
        mid = _patched_mid(base, get_act_name("resid_mid", l), name, source, indices, B, None if W_O is None else W_O[l])
        final = model(mid, start_at_layer=l, start_at_mid=True, stop_at_layer=L, keep_last=keep)
    else:
        shifted = [(idx[0] - p, *idx[1:]) if plan.by == "pos" and p else idx for idx in indices]  # from p on
        final = _patched_final(model, base, l, p, plan.cut.n_pos, keep, len(chunk), B,
                               (name, _writer(shifted, source, B)), plan.local)
    return metric_blocks(model, final, metric, B, read_only=bool(keep))


@torch.no_grad()
def activation_patching(model, clean: Tensor, corrupted, metric: Callable, point: str = "resid_pre",
                        by: str = "pos", *, direction: str = "denoising", max_rows: int = 512) -> PatchingResult:
    """Returns PatchingResult with scores [layer, pos] (resid_pre/mid/post, attn_out, mlp_out; by="pos"),
    [layer] (same points, by="all"), [layer, head] (z/q/k/v/pattern, by="all") or [layer, pos, head]
    (z/q/k/v, by="pos").

    corrupted: tokens of the same shape, or a Corruption (gaussian_noise_embeddings, mean_ablation).
    direction: "denoising" runs corrupted and patches in clean activations (sufficiency; ROME's
    restoration); "noising" runs clean and patches in corrupted ones (necessity). metric: logits
    [batch, pos, d_vocab] -> [batch]; a metrics.Metric is unembedded at its position only.
    max_rows bounds the rows of one forward (patches x batch). Under hooks set with model.hooks(...), which
    may index positions, the positional shortcuts are off: every patch runs every position (`sweep_plan`).
    Meng et al. 2022 (ROME); Zhang & Nanda 2023; Heimersheim & Nanda 2024; axes as TL's get_act_patch_*."""
    check_count(max_rows, "max_rows", "the most rows (patches x batch) one forward may hold")
    clean, corrupted = _prepare(model, clean, corrupted, direction)
    (B, T), L, H = clean.tokens.shape, model.cfg.n_layer, model.cfg.n_head
    axes, sites = _sites(point, by, L, T, H)
    plan = sweep_plan(model, clean.tokens, corrupted, metric, point, by)
    m_clean, clean_cache = _run(model, clean, plan.cached_names(L), metric, B)
    m_corr, corr_cache = _run(model, corrupted, plan.cached_names(L), metric, B)
    base, source = (corr_cache, clean_cache) if direction == "denoising" else (clean_cache, corr_cache)
    m_base = m_corr if direction == "denoising" else m_clean
    W_O = model.W_O if point == "z" and plan.from_mid else None  # [layer, head, d_head, d_model]
    per_prompt = torch.empty(*(L if a == "layer" else T if a == "pos" else H for a in axes), B)
    per_chunk = max(1, max_rows // B)
    for l in range(L):
        groups = {}  # first position a forward must compute -> its sites
        for site in (s for s in sites if s[0] == l):
            groups.setdefault(plan.start(site), []).append(site)
        for p, group in groups.items():
            if plan.changes_nothing(p):
                for _, where, _ in group:
                    per_prompt[where] = m_base.cpu()
                continue
            src = _positions(source[get_act_name(point, l)], point, p, plan.cut.n_pos)
            if plan.source_at_read_only(l, L):  # hooked in a kept block
                src = _positions(src, point, -1)
            for start in range(0, len(group), per_chunk):
                chunk = group[start:start + per_chunk]
                values = _patched_values(model, plan, base, l, p, chunk, src, B, metric, W_O)
                for (_, where, _), row in zip(chunk, values):
                    per_prompt[where] = row.cpu()
    m_clean, m_corr = m_clean.cpu(), m_corr.cpu()
    return PatchingResult(scores=normalized(per_prompt, m_clean, m_corr), axes=axes, raw=per_prompt.mean(-1),
                          per_prompt=per_prompt, clean=float(m_clean.mean()), corrupted=float(m_corr.mean()),
                          metric=metric_name(metric), direction=direction, point=point,
                          clean_per_prompt=m_clean, corrupted_per_prompt=m_corr)


@torch.no_grad()
def patch_one(model, clean: Tensor, corrupted, point: str, layer: int, *, pos: int | None = None,
              head: int | None = None, direction: str = "denoising") -> Tensor:
    """Returns logits [batch, pos, d_vocab] of one patched run: one full forward, one hook.
    The reference definition that `activation_patching` sweeps are tested against."""
    clean, corrupted = _prepare(model, clean, corrupted, direction)
    check_integers(layer, "layer", "an int layer index (negative counts from the last layer)")
    base, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    if pos is not None:
        check_integers(pos, "pos", "None (all positions) or an int position")
        pos = int(check_positions(pos, clean.tokens.shape[1]))
    if head is not None:
        check_index(head, model.cfg.n_head, "head", "heads")
    name, idx = get_act_name(point, layer), act_index(point, pos, head)
    if source.tokens is None:
        src = source.values[name]
    else:
        src = model.run_with_cache(source.tokens, names_filter=[name], fwd_hooks=list(source.fwd_hooks))[1][name]

    def hook(x, _):
        x = x.clone()
        x[(slice(None), *idx)] = src[(slice(None), *idx)]
        return x

    return model.run_with_hooks(base.tokens, fwd_hooks=[*base.fwd_hooks, (name, hook)])


def _as_corruption(x) -> Corruption:
    return x if isinstance(x, Corruption) else Corruption(token_batch(x))


__all__ = ["PatchingResult", "activation_patching", "patch_one", "gaussian_noise_embeddings", "mean_ablation",
           "resample_ablation", "act_index", "SweepPlan", "sweep_plan"]
