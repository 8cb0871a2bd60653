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

Scores: `scores` = (m - m_new) / (m_orig - m_new), 1 = undamaged, 0 = as bad as x_new (noising
convention; the result's `clean` is m_orig and `corrupted` m_new); `relative_change` = (m - m_orig) / m_orig,
the IOI paper's "% change in logit difference"/100. Each sender must come before a receiver it sends to
(a head in layer l reaches q/k/v of later layers and mlp_in of its own layer on); impossible paths and an
empty sender list are errors, not a score of 1.
Options freeze_mlps (MLP outputs frozen to x_orig: direct paths only) and freeze_ln (every LN scale
frozen to x_orig, in C and D: linearised) default to False, the paper's setting.
`path_plan` decides every shortcut in one place (a `PathPlan`): runs start at the first position where
x_orig and x_new differ, pass C stops at the last receiver's block, experiments run side by side.
`direct_path_patch` is TL 4.3's edge patch (docs/methods.md §2.3), a different quantity. Definitions and
identities: docs/methods.md §2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from minitx.checks import check_count
from minitx.engine import (cached_past, check_metric_values, check_same_shape, final_resid, metric_blocks,
                           position_mask, shortcuts, token_batch)
from minitx.hooks import get_act_name
from minitx.metrics import metric_name, normalized
from minitx.results import Result


@dataclass(kw_only=True, repr=False)
class PathPatchingResult(Result):
    """Path patching in the noising convention, x_orig the run patched, x_new the senders' source.

    scores: (m - m_new) / (m_orig - m_new) on batch means: 1 = undamaged, 0 = as bad as on x_new;
    raw: the patched runs' batch-mean metric; per_prompt [*axes, batch]; clean: m_orig (batch mean;
    x_orig plays the clean prompt); corrupted: m_new (batch mean); clean_per_prompt/corrupted_per_prompt:
    the same per prompt [batch]. Extra: relative_change = (raw - clean) / clean, the IOI paper's
    "% change in logit difference" / 100. A sender sweep leaves NaN where a sender has no path to any
    receiver (a head at or after the receivers' layer)."""

    relative_change: Tensor
    clean_per_prompt: Tensor | None = None
    corrupted_per_prompt: Tensor | None = None


@dataclass(kw_only=True, repr=False)
class DirectPathResult(Result):
    """One edge's denoising score (TL 4.3 get_act_patch_direct_path): scores 0-d = (m - m_corr)/(m_clean - m_corr);
    raw: the patched run's batch-mean metric; per_prompt [batch]; clean/corrupted: batch means. Extras:
    the sender (layer, head) and receiver ("q"|"k"|"v", layer, head)."""

    sender: tuple
    receiver: tuple


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
    if isinstance(r, tuple) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in r):
        raise ValueError(f"receiver {r!r} is a head; say which of its inputs receives: ('q', {r[0]}, {r[1]}), "
                         f"('k', {r[0]}, {r[1]}) or ('v', {r[0]}, {r[1]}), or a list of them (other receivers: "
                         f"('mlp_in', layer) or 'logits'; layer < {L}, head < {H})")
    raise ValueError(f"receiver {r!r}: use ('q'|'k'|'v', layer, head), ('mlp_in', layer) or 'logits' "
                     f"(layer < {L}, head < {H})")


def _reaches(sender: tuple, receiver: tuple) -> bool:
    """Whether a validated sender writes anything the receiver reads: the embedding reaches every receiver;
    a head in layer l writes after layer l's attention, so it reaches queries, keys and values of later
    layers only, and the MLP input of its own layer on; an MLP in layer l reaches layers after l."""
    name, _, layer = receiver
    if sender[0] == "embed" or name == "logits":
        return True
    if sender[0] == "head" and name.endswith("hook_mlp_in"):
        return sender[1] <= layer
    return sender[1] < layer


def _check_paths(senders: list, receivers: list, raw_senders: list, raw_receivers: list) -> None:
    """ValueError unless there is at least one sender and each reaches at least one receiver."""
    if not senders:
        raise ValueError("senders is empty: give at least one sender (a head (layer, head), ('mlp', layer) or "
                         "'embed'); with no sender every path carries x_orig and there is nothing to measure")
    for sender, raw in zip(senders, raw_senders):
        if not any(_reaches(sender, r) for r in receivers):
            raise ValueError(f"sender {raw!r} has no path to receiver(s) {', '.join(map(repr, raw_receivers))}: "
                             "a sender must come before what it sends to (a head in layer l reaches q/k/v of "
                             "layers > l and mlp_in of layers >= l; an MLP in layer l reaches layers > l)")


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


def _is_single_receiver(r) -> bool:  # (5, 0), a tuple of ints, is one (refused) head, never two receivers
    return r == "logits" or (isinstance(r, tuple) and len(r) > 0 and isinstance(r[0], (str, int)))


# -- the plan: what passes C and D run ---------------------------------------------------------------
@dataclass(frozen=True)
class PathPlan:
    """Every shortcut of a batch of path-patching experiments, decided once, as data.

    shared: x_orig and x_new hold the same tokens at positions 0..shared-1, so neither pass changes anything
        there: both run positions shared.. with x_orig's earlier keys and values (0 under context hooks;
        at most T - 1, so a run always has a position).
    receivers: [(point name, head or None, layer)], or [("logits", None, n_layer)].
    stop: pass C runs blocks up to here (exclusive): the last receiver's block + 1.
    chunks: experiment indices run side by side in one forward, each chunk's senders starting in one layer.
    starts: each chunk's first layer of pass C (its earliest sender's; n_layer when it has none)."""

    shared: int
    receivers: list
    stop: int
    chunks: list
    starts: list

    @property
    def to_logits(self) -> bool:
        return self.receivers[0][0] == "logits"

    @property
    def receiver_names(self) -> list[str]:
        return sorted({r[0] for r in self.receivers if r[0] != "logits"})

    @property
    def first_receiver(self) -> int:
        return min(r[2] for r in self.receivers)


def path_plan(model, x_orig: Tensor, x_new: Tensor, experiments: list, receivers: list, max_rows: int) -> PathPlan:
    """The PathPlan for validated experiments [[sender, ...], ...] and receivers, at most max_rows rows a forward."""
    L, B, T = model.cfg.n_layer, *x_orig.shape
    cut = shortcuts(model, x_orig, x_new, None)
    start_of = lambda exp: min((0 if s[0] == "embed" else s[1] for s in exp), default=L)  # noqa: E731
    order = sorted(range(len(experiments)), key=lambda i: start_of(experiments[i]))
    per_chunk = max(1, max_rows // B)
    chunks = [order[i:i + per_chunk] for i in range(0, len(order), per_chunk)]
    chunks = [part for chunk in chunks for part in _split_by(chunk, lambda i: start_of(experiments[i]))]
    return PathPlan(shared=min(cut.shared, T - 1), receivers=receivers, stop=max(r[2] for r in receivers) + 1,
                    chunks=chunks, starts=[start_of(experiments[chunk[0]]) for chunk in chunks])


def _split_by(items: list, key: Callable) -> list[list]:
    groups: list[list] = []
    for item in items:
        if groups and key(groups[-1][0]) == key(item):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


# -- the loop: passes A and B once, then C and D per chunk of experiments --------------------------------
class _Passes:
    """Wang et al.'s passes over one prompt pair: A and B (caching x_new and x_orig) when built, then
    `record` (pass C) and `patched_final` (pass D) for each chunk of n experiments side by side, every
    run covering positions plan.shared.. only."""

    def __init__(self, model, x_orig, x_new, plan: PathPlan, metric, freeze_mlps: bool, freeze_ln: bool):
        L = model.cfg.n_layer
        self.model, self.plan, self.freeze_mlps, self.freeze_ln = model, plan, freeze_mlps, freeze_ln
        self.B, self.T, self.S = *x_orig.shape, plan.shared
        self.z, self.mlp, self.resid = ([get_act_name(n, l) for l in range(L)] for n in ("z", "mlp_out", "resid_pre"))
        self.scales = [f"blocks.{l}.ln{i}.hook_scale" for l in range(L) for i in (1, 2)] + ["ln_final.hook_scale"]
        self.last = get_act_name("resid_post", L - 1)
        kv = [get_act_name(kind, l) for l in range(L) for kind in "kv"] if self.S else []
        names = self.z + self.mlp + self.resid + [self.last] + plan.receiver_names + (self.scales if freeze_ln else []) + kv
        logits_new, self.new = model.run_with_cache(x_new, names_filter=self.z + self.mlp + self.resid)  # pass A
        logits_orig, self.orig = model.run_with_cache(x_orig, names_filter=names)  # pass B
        self.m_orig = check_metric_values(metric(logits_orig), self.B).float()
        self.m_new = check_metric_values(metric(logits_new), self.B).float()

    def cut(self, x: Tensor) -> Tensor:  # a cached [rows, pos, ...] activation holds every position; passes run S..
        return x[:, self.S:] if self.S and x.shape[1] == self.T else x

    def where(self, mask: Tensor, new_value: Tensor, base: Tensor, n: int) -> Tensor:
        """mask [n or 1, batch, pos, *] ? new_value : base, each [batch or n * batch, pos, ...] -> [n * batch, pos - S, ...]."""
        B, (mask, new_value, base) = self.B, (mask[:, :, self.S:], self.cut(new_value), self.cut(base))
        shape = base.shape
        base = base.reshape(-1, B, *shape[1:])
        mask = mask.reshape(*mask.shape, *[1] * (base.dim() - mask.dim()))
        return torch.where(mask, new_value.reshape(-1, B, *shape[1:]), base).expand(n, *base.shape[1:]).reshape(
            n * B, *shape[1:])

    def ln_hooks(self, first_layer: int, n: int) -> list:
        """With freeze_ln: every LN scale from first_layer on frozen to x_orig's."""
        if not self.freeze_ln:
            return []
        frozen = [s for s in self.scales if not s.startswith("blocks.") or int(s.split(".")[1]) >= first_layer]
        return [(s, lambda x, h: self.orig[h.name][:, self.S:].repeat(n, 1, 1)) for s in frozen]

    def sender_hooks(self, exps: list, s0: int, s_mask: Tensor) -> list:
        """Pass C's freezing: every head's z is x_orig's except the senders' at the sender positions (x_new's);
        MLP senders likewise (other MLPs recomputed, or frozen with freeze_mlps); the embedding sender."""
        n, (B, T), H = len(exps), s_mask.shape, self.model.cfg.n_head
        hooks = []
        for l in range(s0, min(self.plan.stop, self.model.cfg.n_layer)):
            head_mask = torch.zeros(n, B, T, H, dtype=torch.bool, device=s_mask.device)
            mlp_mask = torch.zeros(n, B, T, dtype=torch.bool, device=s_mask.device)
            for i, exp in enumerate(exps):
                for s in exp:
                    if s[0] == "head" and s[1] == l:
                        head_mask[i, :, :, s[2]] = s_mask
                    elif s[0] == "mlp" and s[1] == l:
                        mlp_mask[i] = s_mask
            hooks.append((self.z[l], lambda x, h, m=head_mask: self.where(m, self.new[h.name], self.orig[h.name], n)))
            if self.freeze_mlps or bool(mlp_mask.any()):
                hooks.append((self.mlp[l], lambda x, h, m=mlp_mask: self.where(m, self.new[h.name], self.frozen_mlp(x, h), n)))
        if s0 == 0 and any(s[0] == "embed" for exp in exps for s in exp):
            emb_mask = torch.stack([s_mask if ("embed",) in exp else torch.zeros_like(s_mask) for exp in exps])
            hooks.append((self.resid[0], lambda x, h: self.where(emb_mask, self.new[self.resid[0]], x, n)))
        return hooks

    def frozen_mlp(self, x: Tensor, h) -> Tensor:
        return self.orig[h.name][:, self.S:] if self.freeze_mlps else x

    def record(self, exps: list, s0: int, s_mask: Tensor) -> dict[str, Tensor]:
        """Pass C for n experiments: each receiver as computed, BEFORE any hook overwrites it (recording hooks
        come first), and "logits": the final residual [n * batch, pos - S, d_model]."""
        n, S, L, stop = len(exps), self.S, self.model.cfg.n_layer, self.plan.stop
        recorded = {name: self.orig[name][:, S:].repeat(n, *[1] * (self.orig[name].dim() - 1))
                    for name in self.plan.receiver_names}
        recorded["logits"] = self.orig[self.last][:, S:].repeat(n, 1, 1)

        def keep(x, h):
            recorded[h.name] = x.clone()

        hooks = [(name, keep) for name in self.plan.receiver_names] + self.sender_hooks(exps, s0, s_mask)
        hooks += self.ln_hooks(s0, n)
        if s0 < min(stop, L):
            start = self.orig[self.resid[s0]][:, S:].repeat(n, 1, 1)
            if stop >= L:  # also the receiver "logits": C's final residual is what D unembeds
                recorded["logits"] = final_resid(self.model, start, s0, hooks, cached_past(self.orig, range(s0, L), S, n))
            else:
                self.model.run_with_hooks(start, start_at_layer=s0, stop_at_layer=stop, fwd_hooks=hooks,
                                          past_kv=cached_past(self.orig, range(s0, stop), S, n))
        return recorded

    def patched_final(self, recorded: dict, n: int, r_mask: Tensor) -> Tensor:
        """Pass D: x_orig with only the receivers set to the recorded values at the receiver positions ->
        the final residual [n * batch, pos, d_model] (positions before S are x_orig's in every experiment)."""
        S, L, H, plan = self.S, self.model.cfg.n_layer, self.model.cfg.n_head, self.plan
        if plan.to_logits:
            final = self.where(r_mask[None], recorded["logits"], self.orig[self.last], n)
        else:
            hooks = []
            for name in plan.receiver_names:
                mask = _receiver_mask(r_mask, [r[1] for r in plan.receivers if r[0] == name], H)
                hooks.append((name, lambda x, h, m=mask: self.where(m, recorded[h.name], x, n)))
            first = plan.first_receiver
            final = final_resid(self.model, self.orig[self.resid[first]][:, S:].repeat(n, 1, 1), first,
                                hooks + self.ln_hooks(first, n), cached_past(self.orig, range(first, L), S, n))
        if S:
            final = torch.cat([self.orig[self.last][:, :S].repeat(n, 1, 1), final], 1)
        return final


def _receiver_mask(r_mask: Tensor, heads: list, H: int) -> Tensor:
    """[batch, pos] receiver positions -> [1, batch, pos] (mlp_in) or [1, batch, pos, head] (q/k/v)."""
    if heads[0] is None:
        return r_mask[None]
    chosen = torch.zeros(H, dtype=torch.bool, device=r_mask.device)
    chosen[heads] = True
    return r_mask[None, :, :, None] & chosen


@torch.no_grad()
def _experiments(model, x_orig, x_new, experiments, receivers, metric, sender_pos, receiver_pos,
                 freeze_mlps, freeze_ln, max_rows):
    """-> per-prompt metric [n_experiments, batch], m_orig [batch], m_new [batch].
    experiments: [[sender, ...], ...], validated; receivers: validated (`_receiver`)."""
    x_orig, x_new = token_batch(x_orig), token_batch(x_new)
    check_same_shape(x_orig, x_new)
    B, T = x_orig.shape
    s_mask = position_mask(sender_pos, B, T).to(x_orig.device)  # [batch, pos]
    r_mask = position_mask(receiver_pos, B, T).to(x_orig.device)
    plan = path_plan(model, x_orig, x_new, experiments, receivers, max_rows)
    passes = _Passes(model, x_orig, x_new, plan, metric, freeze_mlps, freeze_ln)
    scale = passes.orig["ln_final.hook_scale"] if freeze_ln else None
    out = torch.empty(len(experiments), B)
    for chunk, s0 in zip(plan.chunks, plan.starts):
        recorded = passes.record([experiments[i] for i in chunk], s0, s_mask)
        final = passes.patched_final(recorded, len(chunk), r_mask)
        out[chunk] = metric_blocks(model, final, metric, B, scale).cpu()
    return out, passes.m_orig.cpu(), passes.m_new.cpu()


def _validated(model, experiments, receivers) -> tuple[list, list]:
    """Raw experiments [[sender, ...], ...] and receivers -> validated ones; each sender must reach a receiver."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    raw_receivers = _as_list(receivers, _is_single_receiver)
    recs = [_receiver(r, L, H) for r in raw_receivers]
    if not recs or (any(r[0] == "logits" for r in recs) and len(recs) > 1):
        raise ValueError("receivers: one or more q/k/v/mlp_in receivers, or 'logits' alone")
    validated = []
    for senders in experiments:
        exp = [_sender(s, L, H) for s in senders]
        _check_paths(exp, recs, senders, raw_receivers)
        validated.append(exp)
    return validated, recs


def _result(per_prompt, m_orig, m_new, metric, axes=()) -> PathPatchingResult:
    raw = per_prompt.mean(-1)
    return PathPatchingResult(scores=normalized(per_prompt, m_orig, m_new), axes=axes, raw=raw, per_prompt=per_prompt,
                              clean=float(m_orig.mean()), corrupted=float(m_new.mean()), metric=metric_name(metric),
                              relative_change=(raw - m_orig.mean()) / m_orig.mean(),
                              clean_per_prompt=m_orig, corrupted_per_prompt=m_new)


def path_patch(model, x_orig: Tensor, x_new: Tensor, senders, receivers, metric: Callable, *,
               sender_pos=None, receiver_pos=None, freeze_mlps: bool = False,
               freeze_ln: bool = False) -> PathPatchingResult:
    """Returns a scalar PathPatchingResult for one experiment (Wang et al. 2022, App. B).

    senders: one sender or a list patched together (at least one; each must come before a receiver).
    receivers: one or a list patched together. positions: None (all), int, list, LongTensor [batch] or
    [batch, k], or a bool mask [batch, pos]; per example allowed. metric: logits [batch, pos, d_vocab] -> [batch]."""
    experiments, recs = _validated(model, [_as_list(senders, _is_single_sender)], receivers)
    per_prompt, m_orig, m_new = _experiments(model, x_orig, x_new, experiments, recs, metric, sender_pos,
                                             receiver_pos, freeze_mlps, freeze_ln, max_rows=1)
    return _result(per_prompt[0], m_orig, m_new, metric)


def path_patch_senders(model, x_orig: Tensor, x_new: Tensor, receivers, metric: Callable, senders=None, *,
                       sender_pos=None, receiver_pos=None, freeze_mlps: bool = False, freeze_ln: bool = False,
                       max_rows: int = 512) -> PathPatchingResult:
    """Returns [layer, head] results (senders=None: every head alone; NaN where a head has no path to the
    receivers) or [sender] for a given list (each must reach a receiver).

    Each sender is its own experiment; experiments run side by side along the batch axis, up to
    max_rows rows per forward, each pass C starting at its sender's layer from the cached x_orig.
    Wang et al. 2022 (IOI), App. B; the sweep of their Fig. 3b (receiver "logits") and Fig. 4b/5b (q/v)."""
    check_count(max_rows, "max_rows", "the most rows (senders x batch) one forward may hold")
    L, H = model.cfg.n_layer, model.cfg.n_head
    if senders is not None:
        experiments, recs = _validated(model, [[s] for s in senders], receivers)
        per_prompt, m_orig, m_new = _experiments(model, x_orig, x_new, experiments, recs, metric, sender_pos,
                                                 receiver_pos, freeze_mlps, freeze_ln, max_rows)
        return _result(per_prompt, m_orig, m_new, metric, ("sender",))
    _, recs = _validated(model, [["embed"]], receivers)
    heads = [(l, h) for l in range(L) for h in range(H)]
    reach = [any(_reaches(("head", l, h), r) for r in recs) for l, h in heads]
    per_prompt, m_orig, m_new = _experiments(model, x_orig, x_new, [[("head", *s)] for s, ok in zip(heads, reach) if ok],
                                             recs, metric, sender_pos, receiver_pos, freeze_mlps, freeze_ln, max_rows)
    grid = torch.full((L * H, per_prompt.shape[-1]), float("nan"))
    grid[torch.tensor(reach)] = per_prompt
    return _result(grid.view(L, H, -1), m_orig, m_new, metric, ("layer", "head"))


@torch.no_grad()
def direct_path_patch(model, clean: Tensor, corrupted: Tensor, sender: tuple[int, int], receiver: tuple,
                      metric: Callable) -> DirectPathResult:
    """Returns a DirectPathResult: one edge's denoising score, TL 4.3's get_act_patch_direct_path
    (docs/methods.md §2.3).

    Runs `corrupted`; adds the sender's write (hook_result, z W_O) clean minus corrupted at every position to the
    receiver head's own pre-LN copy of its q/k/v input only (hook_{q,k,v}_input); nothing is frozen, LN is
    recomputed on the copy. Not equal to Wang et al. path patching (different baseline, no freezing,
    no MLP-mediated paths). scores = (m - m_corr)/(m_clean - m_corr). The receiver must be in a later layer."""
    L, H = model.cfg.n_layer, model.cfg.n_head
    kind, *where = _sender(sender, L, H)
    if kind != "head":
        raise ValueError(f"direct_path_patch sender {sender!r}: it patches one head's output, so the sender is "
                         f"(layer, head) with layer < {L}, head < {H}")
    (sl, sh), (rname, rh, rl) = where, _receiver(receiver, L, H)
    if rname == "logits" or rh is None:
        raise ValueError(f"direct_path_patch receivers are ('q'|'k'|'v', layer, head); got {receiver!r}")
    if rl <= sl:
        raise ValueError(f"direct_path_patch: sender {sender!r} has no edge to receiver {receiver!r}; a head in "
                         f"layer {sl} writes into the queries, keys and values of layers > {sl} only")
    clean, corrupted = token_batch(clean), token_batch(corrupted)
    check_same_shape(clean, corrupted)
    write = get_act_name("result", sl)  # each head's own write into the residual stream
    logits_c, cache_c = model.run_with_cache(clean, names_filter=write)
    logits_x, cache_x = model.run_with_cache(corrupted, names_filter=write)
    m_c, m_x = (check_metric_values(metric(x), len(clean)).float() for x in (logits_c, logits_x))
    delta = (cache_c[write] - cache_x[write])[:, :, sh]  # [batch, pos, d_model]

    def add(x, _):
        x = x.clone()
        x[:, :, rh] += delta
        return x

    point = get_act_name(f"{receiver[0]}_input", rl)
    m = check_metric_values(metric(model.run_with_hooks(corrupted, fwd_hooks=[(point, add)])), len(clean)).float()
    return DirectPathResult(scores=normalized(m, m_c, m_x), raw=m.mean(), per_prompt=m, clean=float(m_c.mean()),
                            corrupted=float(m_x.mean()), metric=metric_name(metric), sender=sender, receiver=receiver)


__all__ = ["PathPatchingResult", "DirectPathResult", "PathPlan", "path_plan", "path_patch", "path_patch_senders",
           "direct_path_patch"]
