"""Path patching: a sender's effect on chosen receivers through the residual stream and MLPs only.

Returns PathPatchingResult: a scalar for one experiment, [layer, head] for a sweep over all heads.

Wang et al. 2022, "Interpretability in the Wild" (IOI), Appendix B, as in the authors' code
(easy_transformer/ioi_utils.py::path_patching):
  A, B. cache x_new and x_orig (shared by every experiment);
  C.    run x_orig with every non-sender head frozen to its x_orig output (hook_z: freezing z freezes
        the head's output, z W_O), the senders set to their x_new value at the sender positions, MLPs
        and layer norms recomputed; record each receiver as computed, BEFORE anything overwrites it
        (hooks on one point run in list order, recording first);
  D.    run x_orig with only the receivers replaced, at the receiver positions, by the recorded
        values, everything else recomputed (receivers of later layers included); take the metric.
For receiver "logits" pass D is just the unembedding of C's final residual at the receiver positions.
Senders: a head (l, h), ("mlp", l) or "embed" (the residual stream before block 0). Receivers:
("q"|"k"|"v", l, h) (the post-projection hook_q/k/v; equivalent to the pre-LN per-head input copy,
since D recomputes the projection), ("mlp_in", l), or "logits" (the final residual, read through ln_final).

Scores: `score` = (m - m_new) / (m_orig - m_new), 1 = undamaged, 0 = as bad as x_new (noising
convention); `relative_change` = (m - m_orig) / m_orig, the IOI paper's "% change in logit difference"/100.
Options freeze_mlps (MLP outputs frozen to x_orig: direct paths only) and freeze_ln (every LN scale
frozen to x_orig, in C and D: linearised) default to False, the paper's setting.
`direct_path_patch` is TL 4.3's edge patch (docs/methods.md §2.3), a different quantity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from minitx.metrics import check_count, metric_name, normalized
from minitx.model import get_act_name
from minitx.patching import (cached_past, check_same_shape, final_resid, metric_blocks, position_mask, shared_prefix,
                             _check_metric, _2d)


@dataclass
class PathPatchingResult:
    """score: 1 = undamaged, 0 = as on x_new; relative_change: (m - m_orig)/m_orig; raw: batch means."""

    score: Tensor
    relative_change: Tensor
    raw: Tensor
    orig: float
    new: float
    metric: str
    axes: tuple = ()
    per_prompt: Tensor | None = None  # [*axes, batch]


def _index(v, n: int) -> bool:
    """v is an int (not a bool, not a float) in 0..n-1."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n


def _sender(s, L: int, H: int) -> tuple:
    """-> ("head", l, h) | ("mlp", l) | ("embed",), validated."""
    if isinstance(s, str) and s == "embed":
        return ("embed",)
    if isinstance(s, tuple) and len(s) == 2 and s[0] == "mlp" and _index(s[1], L):
        return s
    if isinstance(s, tuple) and len(s) == 2 and _index(s[0], L) and _index(s[1], H):
        return ("head", *s)
    raise ValueError(f"sender {s!r}: use a head (layer, head) with layer < {L}, head < {H}; ('mlp', layer); or 'embed'")


def _receiver(r, L: int, H: int) -> tuple:
    """-> (point name, head or None, layer); "logits" -> ("logits", None, L)."""
    if isinstance(r, str) and r == "logits":
        return ("logits", None, L)
    if isinstance(r, tuple) and len(r) == 3 and r[0] in ("q", "k", "v") and _index(r[1], L) and _index(r[2], H):
        return (get_act_name(r[0], r[1]), r[2], r[1])
    if isinstance(r, tuple) and len(r) == 2 and r[0] == "mlp_in" and _index(r[1], L):
        return (get_act_name("mlp_in", r[1]), None, r[1])
    raise ValueError(f"receiver {r!r}: use ('q'|'k'|'v', layer, head), ('mlp_in', layer) or 'logits' "
                     f"(layer < {L}, head < {H})")


def _as_list(x, single: Callable) -> list:
    """One sender/receiver -> [it]; a list of them -> the list. A string is always one (never its letters)."""
    if isinstance(x, str) or single(x):
        return [x]
    try:
        return list(x)
    except TypeError:  # not a collection: validated (and refused) as one sender/receiver
        return [x]


def _is_single_sender(s) -> bool:  # a tuple of ints or ("mlp", l) is one sender, validated whole
    return s == "embed" or (isinstance(s, tuple) and len(s) > 0 and (s[0] == "mlp" or isinstance(s[0], int)))


def _is_single_receiver(r) -> bool:
    return r == "logits" or (isinstance(r, tuple) and len(r) > 0 and isinstance(r[0], str))


@torch.no_grad()
def _experiments(model, x_orig, x_new, experiments, receivers, metric, sender_pos, receiver_pos,
                 freeze_mlps, freeze_ln, max_rows):
    """-> per-prompt metric [n_experiments, batch], m_orig [batch], m_new [batch]."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    x_orig, x_new = _2d(x_orig), _2d(x_new)
    check_same_shape(x_orig, x_new)
    B, T = x_orig.shape
    experiments = [[_sender(s, L, H) for s in senders] for senders in experiments]
    recs = [_receiver(r, L, H) for r in _as_list(receivers, _is_single_receiver)]
    if not recs or (any(r[0] == "logits" for r in recs) and len(recs) > 1):
        raise ValueError("receivers: one or more q/k/v/mlp_in receivers, or 'logits' alone")
    to_logits = recs[0][0] == "logits"
    s_mask = position_mask(sender_pos, B, T).to(x_orig.device)  # [batch, pos]
    r_mask = position_mask(receiver_pos, B, T).to(x_orig.device)

    z, mlp, resid = ([get_act_name(n, l) for l in range(L)] for n in ("z", "mlp_out", "resid_pre"))
    scales = [f"blocks.{l}.ln{i}.hook_scale" for l in range(L) for i in (1, 2)] + ["ln_final.hook_scale"]
    last = f"blocks.{L - 1}.hook_resid_post"
    rec_names = sorted({r[0] for r in recs if r[0] != "logits"})
    # Before the first position where x_orig and x_new differ, both hold the same values, so neither pass
    # changes anything there: passes C and D run positions S.. with x_orig's earlier keys and values.
    # (Not under model.hooks(...) context hooks, which may index positions.)
    S = 0 if any(model._context_hooks) else min(shared_prefix(x_orig, x_new), T - 1)
    kv = [get_act_name(kind, l) for l in range(L) for kind in "kv"] if S else []
    names = z + mlp + resid + [last] + rec_names + (scales if freeze_ln else []) + kv
    logits_new, new = model.run_with_cache(x_new, names_filter=z + mlp + resid)  # pass A
    logits_orig, orig = model.run_with_cache(x_orig, names_filter=names)  # pass B
    m_orig, m_new = _check_metric(metric(logits_orig), B), _check_metric(metric(logits_new), B)

    def ln_hooks(first_layer: int, n: int) -> list:
        if not freeze_ln:
            return []
        frozen = [s for s in scales if not s.startswith("blocks.") or int(s.split(".")[1]) >= first_layer]
        return [(s, lambda x, h: orig[h.name][:, S:].repeat(n, 1, 1)) for s in frozen]

    def cut(x):  # a cached [rows, pos, ...] activation holds every position; the passes run S..
        return x[:, S:] if S and x.shape[1] == T else x

    def where(mask, new_value, base, n):  # mask [n, batch, pos, *]; values [batch or n*batch, pos, ...]
        mask, new_value, base = mask[:, :, S:], cut(new_value), cut(base)
        shape = base.shape
        base = base.reshape(-1, B, *shape[1:])
        mask = mask.reshape(*mask.shape, *[1] * (base.dim() - mask.dim()))
        return torch.where(mask, new_value.reshape(-1, B, *shape[1:]), base).expand(n, *base.shape[1:]).reshape(
            n * B, *shape[1:])

    def frozen_mlp(x, h):
        return orig[h.name][:, S:] if freeze_mlps else x

    start_of = lambda exp: min((0 if s[0] == "embed" else s[1] for s in exp), default=L)
    out = torch.empty(len(experiments), B)
    per_chunk = max(1, max_rows // B)
    order = sorted(range(len(experiments)), key=lambda i: start_of(experiments[i]))
    chunks = [order[i:i + per_chunk] for i in range(0, len(order), per_chunk)]
    chunks = [c2 for c in chunks for c2 in _split_by(c, lambda i: start_of(experiments[i]))]
    stop = max(r[2] for r in recs) + 1  # pass C is needed up to the last receiver's block
    for chunk in chunks:
        n, s0 = len(chunk), start_of(experiments[chunk[0]])
        exps = [experiments[i] for i in chunk]
        # ---- pass C: record receivers first, then freeze every head to x_orig except the senders
        recorded = {name: orig[name][:, S:].repeat(n, *[1] * (orig[name].dim() - 1)) for name in rec_names}
        recorded["logits"] = orig[last][:, S:].repeat(n, 1, 1)

        def record(x, h):
            recorded[h.name] = x.clone()

        hooks = [(name, record) for name in rec_names]
        for l in range(s0, min(stop, L)):
            head_mask = torch.zeros(n, B, T, H, dtype=torch.bool, device=x_orig.device)
            mlp_mask = torch.zeros(n, B, T, dtype=torch.bool, device=x_orig.device)
            for i, exp in enumerate(exps):
                for s in exp:
                    if s[0] == "head" and s[1] == l:
                        head_mask[i, :, :, s[2]] = s_mask
                    elif s[0] == "mlp" and s[1] == l:
                        mlp_mask[i] = s_mask
            hooks.append((z[l], lambda x, h, m=head_mask: where(m, new[h.name], orig[h.name], n)))  # freeze
            if freeze_mlps or bool(mlp_mask.any()):
                hooks.append((mlp[l], lambda x, h, m=mlp_mask: where(m, new[h.name], frozen_mlp(x, h), n)))
        if s0 == 0 and any(s[0] == "embed" for exp in exps for s in exp):
            emb_mask = torch.stack([s_mask if ("embed",) in exp else torch.zeros_like(s_mask) for exp in exps])
            hooks.append((resid[0], lambda x, h: where(emb_mask, new[resid[0]], x, n)))
        hooks += ln_hooks(s0, n)
        if s0 < min(stop, L):
            start = orig[resid[s0]][:, S:].repeat(n, 1, 1)
            if stop >= L:  # also the receiver "logits": C's final residual is what D unembeds
                recorded["logits"] = final_resid(model, start, s0, hooks, cached_past(orig, range(s0, L), S, n))
            else:
                model.run_with_hooks(start, start_at_layer=s0, stop_at_layer=stop, past_kv=cached_past(orig, range(s0, stop), S, n),
                                     fwd_hooks=hooks)
        # ---- pass D: x_orig with only the receivers patched, at the receiver positions
        scale = orig["ln_final.hook_scale"] if freeze_ln else None
        if to_logits:
            final = where(r_mask[None], recorded["logits"], orig[last], n)
        else:
            first = min(r[2] for r in recs)
            hooks = []
            for name in rec_names:
                mask = _receiver_mask(r_mask, [r[1] for r in recs if r[0] == name], H)
                hooks.append((name, lambda x, h, m=mask: where(m, recorded[h.name], x, n)))
            final = final_resid(model, orig[resid[first]][:, S:].repeat(n, 1, 1), first, hooks + ln_hooks(first, n),
                                cached_past(orig, range(first, L), S, n))
        if S:  # the positions before S are x_orig's in every experiment
            final = torch.cat([orig[last][:, :S].repeat(n, 1, 1), final], 1)
        out[chunk] = metric_blocks(model, final, metric, B, scale).cpu()
    return out, m_orig.cpu(), m_new.cpu()


def _receiver_mask(r_mask: Tensor, heads: list, H: int) -> Tensor:
    """[batch, pos] receiver positions -> [1, batch, pos] (mlp_in) or [1, batch, pos, head] (q/k/v)."""
    if heads[0] is None:
        return r_mask[None]
    chosen = torch.zeros(H, dtype=torch.bool, device=r_mask.device)
    chosen[heads] = True
    return r_mask[None, :, :, None] & chosen


def _split_by(items: list, key: Callable) -> list[list]:
    groups: list[list] = []
    for item in items:
        if groups and key(groups[-1][0]) == key(item):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _result(per_prompt, m_orig, m_new, metric, axes=()) -> PathPatchingResult:
    raw = per_prompt.mean(-1)
    return PathPatchingResult(score=normalized(per_prompt, m_orig, m_new),
                              relative_change=(raw - m_orig.mean()) / m_orig.mean(), raw=raw,
                              orig=float(m_orig.mean()), new=float(m_new.mean()), metric=metric_name(metric),
                              axes=axes, per_prompt=per_prompt)


def path_patch(model, x_orig: Tensor, x_new: Tensor, senders, receivers, metric: Callable, *,
               sender_pos=None, receiver_pos=None, freeze_mlps: bool = False,
               freeze_ln: bool = False) -> PathPatchingResult:
    """Returns a scalar PathPatchingResult for one experiment (Wang et al. 2022, App. B).

    senders: one sender or a list patched together ([] = no sender: effect 0). receivers: one or a
    list patched together. positions: None (all), int, list, LongTensor [batch] or [batch, k], or a
    bool mask [batch, pos]; per example allowed. metric: logits [batch, pos, d_vocab] -> [batch]."""
    senders = _as_list(senders, _is_single_sender)
    per_prompt, m_orig, m_new = _experiments(model, x_orig, x_new, [senders], receivers, metric, sender_pos,
                                             receiver_pos, freeze_mlps, freeze_ln, max_rows=1)
    return _result(per_prompt[0], m_orig, m_new, metric)


def path_patch_senders(model, x_orig: Tensor, x_new: Tensor, receivers, metric: Callable, senders=None, *,
                       sender_pos=None, receiver_pos=None, freeze_mlps: bool = False, freeze_ln: bool = False,
                       max_rows: int = 512) -> PathPatchingResult:
    """Returns [layer, head] results (senders=None: every head alone) or [sender] for a given list.

    Each sender is its own experiment; experiments run side by side along the batch axis, up to
    max_rows rows per forward, each pass C starting at its sender's layer from the cached x_orig.
    Wang et al. 2022 (IOI), App. B; the sweep of their Fig. 3b (receiver "logits") and Fig. 4b/5b (q/v)."""
    check_count(max_rows, "max_rows", "the most rows (senders x batch) one forward may hold")
    L, H = model.cfg.n_layer, model.cfg.n_head
    grid = senders is None
    senders = [(l, h) for l in range(L) for h in range(H)] if grid else list(senders)
    per_prompt, m_orig, m_new = _experiments(model, x_orig, x_new, [[s] for s in senders], receivers, metric,
                                             sender_pos, receiver_pos, freeze_mlps, freeze_ln, max_rows)
    if grid:
        return _result(per_prompt.view(L, H, -1), m_orig, m_new, metric, ("layer", "head"))
    return _result(per_prompt, m_orig, m_new, metric, ("sender",))


@torch.no_grad()
def direct_path_patch(model, clean: Tensor, corrupted: Tensor, sender: tuple[int, int], receiver: tuple,
                      metric: Callable) -> Tensor:
    """Returns a 0-d denoising score for one edge: TL 4.3's get_act_patch_direct_path (docs/methods.md §2.3).

    Runs `corrupted`; adds the sender's write (hook_result, z W_O) clean minus corrupted at every position to the receiver
    head's own pre-LN copy of its q/k/v input only (hook_{q,k,v}_input); nothing is frozen, LN is
    recomputed on the copy. Not equal to Wang et al. path patching (different baseline, no freezing,
    no MLP-mediated paths). Score = (m - m_corr)/(m_clean - m_corr); 0 when receiver layer <= sender layer."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    kind, *where = _sender(sender, L, H)
    if kind != "head":
        raise ValueError(f"direct_path_patch sender {sender!r}: it patches one head's output, so the sender is "
                         f"(layer, head) with layer < {L}, head < {H}")
    (sl, sh), (rname, rh, rl) = where, _receiver(receiver, L, H)
    if rname == "logits" or rh is None:
        raise ValueError(f"direct_path_patch receivers are ('q'|'k'|'v', layer, head); got {receiver!r}")
    clean, corrupted = _2d(clean), _2d(corrupted)
    check_same_shape(clean, corrupted)
    write = get_act_name("result", sl)  # each head's own write into the residual stream
    logits_c, cache_c = model.run_with_cache(clean, names_filter=write)
    logits_x, cache_x = model.run_with_cache(corrupted, names_filter=write)
    m_c, m_x = metric(logits_c), metric(logits_x)
    if rl <= sl:
        return normalized(m_x, m_c, m_x)
    delta = (cache_c[write] - cache_x[write])[:, :, sh]  # [batch, pos, d_model]

    def add(x, _):
        x = x.clone()
        x[:, :, rh] += delta
        return x

    point = get_act_name(f"{receiver[0]}_input", rl)
    return normalized(metric(model.run_with_hooks(corrupted, fwd_hooks=[(point, add)])), m_c, m_x)


__all__ = ["PathPatchingResult", "path_patch", "path_patch_senders", "direct_path_patch"]
