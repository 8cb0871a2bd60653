"""Activation patching, denoising and noising, swept over layers, positions and heads.

Returns PatchingResult scores in TransformerLens's axis order: [layer, pos], [layer], [layer, head],
[layer, pos, head]. Score = (patched - corrupted) / (clean - corrupted) on batch means, in both
directions: 1 = clean behaviour, 0 = corrupted behaviour.

Methods: Meng et al. 2022 (ROME causal tracing: Gaussian noise on the subject embeddings, restored
one site at a time); Zhang & Nanda 2023 (best practices: token-replacement corruptions, logit
difference, normalisation); Heimersheim & Nanda 2024 (denoising = sufficiency, noising = necessity;
they are not mirror images). Mean ablation follows Wang et al. 2022; resample ablation Chan et al. 2022.

Sweeps are batched: for layer l, every patch of that layer runs in one forward of
(n_patches x batch) rows that starts from the cached residual stream before block l
(`start_at_layer=l`), with one hook writing patch i into row block i. Causality trims the rest:
a per-position patch at p runs positions p.. only, reading earlier keys and values from the base
run's cache (`past_kv`); a z, q or post-attention patch runs layer l at p alone; an all-position
patch of z, attn_out or resid_mid starts after layer l's attention (`start_at_mid`); and a
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

from minitx.metrics import Metric, check_count, check_integers, describe, metric_name, normalized, resolve_pos
from minitx.model import get_act_name, point_names

RESID_LIKE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
HEAD_LIKE = ("z", "q", "k", "v", "pattern")
LOCAL = ("z", "q", "attn_out", "resid_mid", "mlp_out", "resid_post")  # a patch at p moves layer l at p only
AFTER_QKV = ("z", "pattern", "attn_out", "resid_mid", "mlp_out", "resid_post")  # keep_last=1 cuts these
DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class Corruption:
    """A corrupted input: tokens plus hooks on the embeddings (e.g. ROME's noise), or, with
    tokens=None, activation values with no prompt behind them (mean ablation; noising only)."""

    tokens: Tensor | None
    fwd_hooks: tuple = ()
    values: dict | None = None  # point name -> [1, pos, ...]
    name: str = "prompt"


@dataclass
class PatchingResult:
    """scores: normalised [*axes]; raw: batch-mean metric [*axes]; clean/corrupted: baselines."""

    scores: Tensor
    raw: Tensor
    clean: float
    corrupted: float
    direction: str
    metric: str
    axes: tuple
    point: str = ""
    per_prompt: Tensor | None = None  # [*axes, batch]
    normalization: str = "(patched - corrupted) / (clean - corrupted), ratio of batch means"


# -- corruptions --------------------------------------------------------------------------------
def differing_positions(a: Tensor, b: Tensor) -> list[int]:
    """Positions (over the common length) where any prompt's tokens differ."""
    a, b = _2d(a), _2d(b)
    n = min(a.shape[1], b.shape[1])
    if a.shape[0] != b.shape[0]:
        return []
    return (a[:, :n] != b[:, :n]).any(0).nonzero()[:, 0].tolist()


def check_same_shape(clean: Tensor, corrupted: Tensor | Corruption) -> None:
    """ValueError saying the two lengths and where tokens differ, unless the shapes match."""
    other = corrupted.tokens if isinstance(corrupted, Corruption) else corrupted
    if other is None:  # prompt-free values: check their positions axis
        other_shape = next(iter(corrupted.values.values())).shape[:2]
        other_shape = (clean.shape[0], other_shape[1])
    else:
        other_shape = tuple(_2d(other).shape)
    shape = tuple(_2d(clean).shape)
    if shape == other_shape:
        return
    if shape[0] != other_shape[0]:
        raise ValueError(f"clean has {shape[0]} prompts and corrupted {other_shape[0]}; patching pairs them "
                         "one to one")
    where = ""
    if other is not None:
        diff, n, end = differing_positions(clean, other), min(shape[1], other_shape[1]), max(shape[1], other_shape[1])
        where = f" Over the first {n} positions tokens differ at {diff}; positions {n}..{end - 1} exist in only one."
    raise ValueError(f"clean and corrupted prompts must have the same length to patch position by position: "
                     f"clean has {shape[1]} tokens, corrupted {other_shape[1]}.{where} Use a corruption that "
                     "keeps token counts (e.g. swap single-token names).")


def position_mask(positions, batch: int, n_pos: int) -> Tensor:
    """None (all), int, list of ints, LongTensor [batch] or [batch, k], or bool [batch, pos] -> bool [batch, pos]."""
    if positions is None:
        return torch.ones(batch, n_pos, dtype=torch.bool)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.shape != (batch, n_pos):
            raise ValueError(f"a boolean position mask must be [batch, pos]=[{batch}, {n_pos}], "
                             f"got {tuple(positions.shape)}")
        return positions.cpu()
    usage = ("positions must be None, an int, a list of ints, a LongTensor [batch] or [batch, k], "
             f"or a bool mask [batch, pos]; got {describe(positions)}")
    try:
        check_integers(positions, "positions", "")
    except TypeError:
        raise ValueError(usage) from None
    if isinstance(positions, (list, tuple)):
        positions = torch.tensor(positions, dtype=torch.long).expand(batch, -1)
    elif isinstance(positions, int):
        positions = torch.full((batch, 1), positions, dtype=torch.long)
    elif isinstance(positions, Tensor) and positions.dim() == 1:
        positions = positions[:, None]
    if not isinstance(positions, Tensor) or positions.dim() != 2 or positions.shape[0] != batch:
        raise ValueError(usage)
    flat = resolve_pos(positions.reshape(-1).cpu(), positions.numel(), n_pos).view(batch, -1)
    return torch.zeros(batch, n_pos, dtype=torch.bool).scatter_(1, flat, True)


def gaussian_noise_embeddings(model, tokens: Tensor, positions, std_factor: float = 3.0, seed: int = 0,
                              reference_tokens: Tensor | None = None) -> Corruption:
    """Returns a Corruption: `tokens` with N(0, std^2) noise added to hook_embed at `positions`.

    Meng et al. 2022 (ROME) causal tracing: std = std_factor (3) x the std of the token embeddings over
    a text set, here the embeddings of `reference_tokens` (default: `tokens` themselves), not all of W_E,
    whose unused rows (never trained, or zero in a small model) would shrink it. Off-distribution
    (Zhang & Nanda 2023); prefer token replacement."""
    tokens = model._check_tokens(tokens)
    if isinstance(std_factor, bool) or not isinstance(std_factor, (int, float)) or not 0 < std_factor < math.inf:
        raise ValueError(f"std_factor={std_factor!r}: the noise std in units of the embeddings' std, a finite number > 0")
    mask = position_mask(positions, *tokens.shape)
    reference = tokens if reference_tokens is None else model._check_tokens(reference_tokens)
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
    ref = _2d(reference_tokens)
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
    tokens, g = _2d(tokens), torch.Generator().manual_seed(seed)
    if reference_tokens is not None:
        ref = _2d(reference_tokens)
        check_same_shape(tokens, ref[:1].expand(len(tokens), -1))
        return ref[torch.randint(len(ref), (len(tokens),), generator=g)].clone()
    if len(tokens) < 2:
        raise ValueError("resampling within the batch needs at least 2 prompts; pass reference_tokens")
    order = torch.randperm(len(tokens), generator=g)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return tokens[partner].clone()


# -- engine pieces shared with path_patching ------------------------------------------------------
def final_resid(model, x: Tensor, start_at_layer: int | None = None, fwd_hooks=(), past_kv=None) -> Tensor:
    """Returns the residual stream after the last block [rows, pos, d_model], not unembedded:
    runs the blocks from start_at_layer (x is then that layer's resid_pre) with fwd_hooks."""
    return model.run_with_hooks(x, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layer,
                                past_kv=past_kv, fwd_hooks=list(fwd_hooks))


def metric_blocks(model, resid: Tensor, metric: Callable, batch: int, ln_final_scale: Tensor | None = None,
                  read_only: bool = False) -> Tensor:
    """Final residual [n * batch, pos, d_model] (row block i = experiment i) -> metric values [n, batch].
    A `Metric` is unembedded only at its position; ln_final_scale [batch, pos, 1] freezes ln_final.
    read_only: resid holds only the Metric's read position, [n * batch, 1, d_model] (a keep_last=1 run)."""
    rows, n_pos = resid.shape[:2]
    n = rows // batch
    scale = None if ln_final_scale is None else ln_final_scale.repeat(n, 1, 1)  # [rows, pos, 1]
    if isinstance(metric, Metric) and (read_only or not any(model._context_hooks)):  # those may index positions
        ar, idx, at_read = torch.arange(rows, device=resid.device), None, resid  # at_read: [rows, 1, d_model]
        if not read_only or scale is not None:  # the read position in the full run's positions
            idx = resolve_pos(metric.pos, batch, n_pos if scale is None else scale.shape[1]).to(resid.device).repeat(n)
        if not read_only:
            at_read = resid[ar, idx][:, None]
        hooks = [] if scale is None else [("ln_final.hook_scale", lambda x, h: scale[ar, idx][:, None])]
        ids, d_vocab = metric.token_ids, model.cfg.d_vocab
        if ids is not None and bool(((ids >= 0) & (ids < d_vocab)).all()):  # out of range: at_pos says so
            ids = ids.to(resid.device)
            logits = resid.new_full((rows, d_vocab), float("nan"))  # columns at_pos never reads stay NaN
            logits[:, ids] = model.unembed(at_read, fwd_hooks=hooks, token_ids=ids)[:, 0]
        else:
            logits = model.unembed(at_read, fwd_hooks=hooks)[:, 0]
        values = [metric.at_pos(block) for block in logits.view(n, batch, -1)]
    else:
        values = []
        for i in range(n):
            rows_i = slice(i * batch, (i + 1) * batch)
            hooks = [] if scale is None else [("ln_final.hook_scale", lambda x, h, s=scale[rows_i]: s)]
            values.append(metric(model.unembed(resid[rows_i], fwd_hooks=hooks)))
    return torch.stack([_check_metric(v, batch) for v in values])


def read_position(metric: Callable, batch: int, n_pos: int) -> int | None:
    """The one position a `Metric` reads in every prompt, or None (another callable, or per-prompt positions)."""
    if not isinstance(metric, Metric):
        return None
    idx = resolve_pos(metric.pos, batch, n_pos)
    return int(idx[0]) if bool((idx == idx[0]).all()) else None


def _check_metric(values, batch: int) -> Tensor:
    if not isinstance(values, Tensor) or values.shape != (batch,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"the metric must map logits [batch, pos, d_vocab] to [batch]=[{batch}], got {shape}")
    return values.float()


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
        final = model(cache["blocks.0.hook_resid_pre"], start_at_layer=0, stop_at_layer=L)
    return metric_blocks(model, final, metric, batch)[0], cache


def shared_prefix(a: Tensor, b: Tensor) -> int:
    """The number of leading positions where every prompt of a and b [batch, pos] has the same tokens."""
    return (differing_positions(a, b) or [a.shape[1]])[0]


def _shared_prefix(clean: Corruption, corrupted: Corruption) -> int:
    """shared_prefix of the token pair; 0 when a corruption is not plain tokens (hooks or stored values
    may differ anywhere)."""
    if corrupted.tokens is None or corrupted.fwd_hooks:
        return 0
    return shared_prefix(clean.tokens, corrupted.tokens)


def _positions(x: Tensor, point: str, first: int, end: int | None = None) -> Tensor:
    """An activation cut to positions first..end-1: the query axis of a pattern (its keys: 0..end-1)."""
    return x[:, :, first:end, :end] if point == "pattern" else x[:, first:end]


def cached_past(cache, layers, p: int, n: int) -> list | None:
    """past_kv for a run of positions p..: the cached run's keys and values of positions < p in `layers`,
    repeated for n experiments side by side ([n * batch, p, head, d_head] each); None when p is 0."""
    return None if not p else [(cache[get_act_name("k", j)][:, :p].repeat(n, 1, 1, 1),
                                cache[get_act_name("v", j)][:, :p].repeat(n, 1, 1, 1)) for j in layers]


def _patched_final(model, base, resid: list[str], l: int, p: int, n_pos: int, keep, n: int, B: int, hook,
                   local: bool) -> Tensor:
    """The final residual of n experiments (row blocks of B), each patched by `hook` at layer l, run over
    positions p..n_pos-1 from the base cache: [n * B, n_pos or keep, d_model].
    local: the patched point changes layer l only at position p (z, q, or after the attention), so layer l
    runs that one position and later positions take the base run's resid_post."""
    L = model.cfg.n_layer


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
    may index positions, the positional shortcuts are off: every patch runs every position.
    Meng et al. 2022 (ROME); Zhang & Nanda 2023; Heimersheim & Nanda 2024; axes as TL's get_act_patch_*."""
    check_count(max_rows, "max_rows", "the most rows (patches x batch) one forward may hold")
    clean, corrupted = _prepare(model, clean, corrupted, direction)
    B, T = clean.tokens.shape
    L, H = model.cfg.n_layer, model.cfg.n_head
    axes, sites = _sites(point, by, L, T, H)
    names = [get_act_name(point, l) for l in range(L)]
    resid = [f"blocks.{l}.hook_resid_pre" for l in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    # A patch at position p changes nothing before p (causal attention), so per-position sweeps run
    # only positions p.. and read the earlier positions' keys and values from the base run's cache.
    # Before the first position where the prompts differ (`shared`), both runs hold the same values:
    # a patch there changes nothing at all, and an all-position patch acts from `shared` on.
    # These shortcuts assume hooks act on each position of the stream they are given; hooks set with
    # model.hooks(...) may index or mix positions, so under them every patch runs every position.
    causal = not any(model._context_hooks)
    shared = _shared_prefix(clean, corrupted) if causal else 0
    suffix = causal and T > 1 and (by == "pos" or shared > 0)
    local = by == "pos" and suffix and point in LOCAL  # ...and such a patch changes layer l itself at p only
    kv = [get_act_name(kind, l) for l in range(L) for kind in "kv"]
    # Patches of z, attn_out or resid_mid at every position change nothing before layer l's attention
    # output, so they start there, from resid_mid plus the patch (z's through W_O), and skip the attention.
    from_mid = causal and by == "all" and shared == 0 and point in ("z", "attn_out", "resid_mid")
    mids = [f"blocks.{l}.hook_resid_mid" for l in range(L)] if from_mid else []
    wanted = sorted(set(names) | set(resid) | (set(kv) if suffix else set()) | set(mids))
    m_clean, clean_cache = _run(model, clean, wanted, metric, B)
    m_corr, corr_cache = _run(model, corrupted, wanted, metric, B)
    base, source = (corr_cache, clean_cache) if direction == "denoising" else (clean_cache, corr_cache)
    m_base = m_corr if direction == "denoising" else m_clean
    # A Metric reading one position R needs positions 0..R only, and the last block only at R.
    read = read_position(metric, B, T) if causal else None
    n_pos, keep = (T, None) if read is None else (read + 1, 1)

    W_O = model.W_O if point == "z" else None  # [layer, head, d_head, d_model]
    shape = tuple(L if a == "layer" else T if a == "pos" else H for a in axes)
    per_prompt = torch.empty(*shape, B)
    per_chunk = max(1, max_rows // B)
    for l in range(L):
        groups = {}  # first position a forward must compute -> its sites
        for site in (s for s in sites if s[0] == l):
            groups.setdefault(site[1][1] if by == "pos" and suffix else shared, []).append(site)
        for p, group in groups.items():
            if p >= n_pos or (by == "pos" and p < shared):  # after the read position, or a no-op patch
                for _, where, _ in group:
                    per_prompt[where] = m_base.cpu()
                continue
            src = _positions(source[names[l]], point, p, n_pos)
            if keep and l == L - 1 and point in AFTER_QKV and not (local or from_mid):  # hooked in a kept block
                src = _positions(src, point, -1)
            for start in range(0, len(group), per_chunk):
                chunk = group[start:start + per_chunk]
                if from_mid:
                    mid = _patched_mid(base, mids[l], names[l], src, [idx for _, _, idx in chunk], B,
                                       None if W_O is None else W_O[l])
                    final = model(mid, start_at_layer=l, start_at_mid=True, stop_at_layer=L, keep_last=keep)
                else:
                    shifted = [(idx[0] - p, *idx[1:]) if by == "pos" and p else idx for _, _, idx in chunk]  # from p on
                    final = _patched_final(model, base, resid, l, p, n_pos, keep, len(chunk), B,
                                           (names[l], _writer(shifted, src, B)), local)
                for (_, where, _), values in zip(chunk, metric_blocks(model, final, metric, B, read_only=bool(keep))):
                    per_prompt[where] = values.cpu()
    return PatchingResult(scores=normalized(per_prompt, m_clean.cpu(), m_corr.cpu()), raw=per_prompt.mean(-1),
                          clean=float(m_clean.mean()), corrupted=float(m_corr.mean()), direction=direction,
                          metric=metric_name(metric), axes=axes, point=point, per_prompt=per_prompt)


@torch.no_grad()
def patch_one(model, clean: Tensor, corrupted, point: str, layer: int, *, pos: int | None = None,
              head: int | None = None, direction: str = "denoising") -> Tensor:
    """Returns logits [batch, pos, d_vocab] of one patched run: one full forward, one hook.
    The reference definition that `activation_patching` sweeps are tested against."""
    clean, corrupted = _prepare(model, clean, corrupted, direction)
    base, source = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    if pos is not None:
        check_integers(pos, "pos", "None (all positions) or an int position")
        pos = int(resolve_pos(pos, 1, clean.tokens.shape[1])[0])
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < model.cfg.n_head):
        raise ValueError(f"head {head!r} is out of range; this model has heads 0..{model.cfg.n_head - 1}")
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
    return x if isinstance(x, Corruption) else Corruption(_2d(x))


def _2d(tokens) -> Tensor:
    """Token ids [pos] or [batch, pos] -> [batch, pos]: the model-free half of the model's own token check
    (the vocabulary and n_positions are checked by the forward)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a LongTensor [batch, pos], got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be a LongTensor [batch, pos] of integer ids, got {tokens.dtype}")
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be [batch, pos] with at least one token, got shape {tuple(tokens.shape)}")
    return tokens


__all__ = ["Corruption", "PatchingResult", "activation_patching", "patch_one", "gaussian_noise_embeddings",
           "mean_ablation", "resample_ablation", "check_same_shape", "differing_positions", "position_mask",
           "act_index", "final_resid", "metric_blocks"]
