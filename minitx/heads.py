"""Head-role scores from attention patterns: offset (previous-token, k-back), induction, duplicate-token,
BOS-sink, TransformerLens's `detect_head`, and the subject/object role-swap test.

Every score reads only the patterns (`blocks.{l}.attn.hook_pattern`, A[q, k]: rows are queries, columns
keys; lower-triangular, rows sum to 1) and averages them over a batch. Index sets are those of
docs/methods.md §5; no function adds BOS to tokens it is given.

References: Olsson et al. 2022, "In-context Learning and Induction Heads" (arXiv:2209.11895);
Wang et al. 2022, "Interpretability in the Wild" (IOI, arXiv:2211.00593), App. H/I;
TransformerLens `head_detector.detect_head`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from minitx.checks import (check_choice, check_count, check_index, check_int, check_max_offset,
                           check_positions, check_real, check_seed, check_token_ids, check_tokens, is_int)
from minitx.hooks import get_act_name
from minitx.model import Transformer
from minitx.results import Result

HEAD_PATTERNS = ("previous_token_head", "duplicate_token_head", "induction_head")


def attention_patterns(model: Transformer, tokens: Tensor) -> Tensor:
    """Returns [layer, batch, head, q_pos, k_pos] attention patterns, caching nothing else.
    Vaswani et al. 2017, "Attention Is All You Need" (the softmax pattern)."""
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    check_memory(model.cfg, *tokens.shape, device=model.W_E.device)
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layer)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[name] for name in names])


def memory_estimate(cfg, batch: int, n_pos: int) -> int:
    """Bytes that scoring heads on [batch, n_pos] tokens needs at its peak, roughly (float32): every layer's
    patterns kept, twice (cached and stacked), plus one block's activations and the logits."""
    size = 4
    patterns = 2 * cfg.n_layer * cfg.n_head * n_pos * n_pos
    block = n_pos * (6 * cfg.d_model + 2 * cfg.d_mlp + 3 * cfg.n_head * n_pos) + n_pos * cfg.d_vocab
    return batch * size * (patterns + block)


def memory_limit(device=None) -> int:
    """Bytes a head-score call may use: MINITX_MAX_BYTES if set, else half the memory of the device the model
    runs on (an accelerator's own memory, or the machine's)."""
    if os.environ.get("MINITX_MAX_BYTES"):
        text = os.environ["MINITX_MAX_BYTES"]
        try:
            return int(float(text))
        except (ValueError, OverflowError):
            raise ValueError(f"MINITX_MAX_BYTES={text!r} is not a number of bytes (e.g. 4e9); unset it to use "
                             "half the device's memory") from None
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # no sysconf on this platform
        return 8 << 30


def check_memory(cfg, batch: int, n_pos: int, device=None) -> None:
    """MemoryError with the estimate, before anything is allocated, when scoring heads would not fit."""
    need, limit = memory_estimate(cfg, batch, n_pos), memory_limit(device)
    if need > limit:
        on = "this machine" if device is None or torch.device(device).type == "cpu" else str(device)
        where = "MINITX_MAX_BYTES" if os.environ.get("MINITX_MAX_BYTES") else \
            f"half the memory of {on}; MINITX_MAX_BYTES sets another limit"
        raise MemoryError(f"scoring heads on {batch} prompts of {n_pos} tokens needs about {need / 2**30:.1f} GiB, "
                          f"more than the {limit / 2**30:.1f} GiB allowed ({where}); use fewer or shorter prompts")


def _without_bos(pattern: Tensor) -> tuple[Tensor, Tensor]:
    """Returns ([..., q_pos, k_pos] pattern with key 0 dropped and rows renormalised over keys >= 1,
    [..., q_pos] rows that keep some mass): docs/methods.md §5, "renormalized without BOS". A row that put all its
    attention on position 0 has no renormalised distribution; callers leave it out."""
    kept = pattern.clone()
    kept[..., 0] = 0
    mass = kept.sum(-1, keepdim=True)  # [..., q, 1]
    valid = mass[..., 0] > 0
    return kept / mass.clamp_min(torch.finfo(mass.dtype).tiny), valid


def _check_tokens(model: Transformer, tokens: Tensor, fits=None, why=None) -> Tensor:
    """checks.check_tokens: a LongTensor [batch, pos] (or [pos]) with at least one token, ids in the vocabulary.
    fits(n_pos) -> bool and why(n_pos) -> message: a score's own length rule, checked first (it says more)."""
    if fits is not None and isinstance(tokens, Tensor) and tokens.dim() in (1, 2) and not fits(tokens.shape[-1]):
        raise ValueError(why(tokens.shape[-1]))
    return check_tokens(tokens, model.cfg.d_vocab)


def _check_heads(heads, n_layer: int, n_head: int) -> list[tuple[int, list[int]]]:
    """detect_head's heads (a list of (layer, head) or {layer: [heads]}) -> [(layer, [heads])], indices checked."""
    usage = "heads must be None, a list of (layer, head) pairs or a dict {layer: [heads]}"
    try:
        pairs = ([(layer, list(hs)) for layer, hs in heads.items()] if isinstance(heads, dict)
                 else [(layer, [head]) for layer, head in heads])
    except (TypeError, ValueError):
        raise TypeError(f"{usage}; got {heads!r:.80}") from None
    for layer, hs in pairs:
        check_index(layer, n_layer, "heads: layer", "layers")
        for head in hs:
            check_index(head, n_head, f"heads: (layer {layer}) head", "heads")
    return pairs


# ---------------------------------------------------------------------------------------------
# Offset ("k-back") heads, docs/methods.md §5.1.


def offset_profile(pattern: Tensor, max_offset: int) -> Tensor:
    """Returns [..., q_pos, offset] the mass A[q, q - d] for d = 0..max_offset (0 where q < d).
    With max_offset >= pos - 1 each row sums to 1: every key is exactly one offset back.
    Olsson et al. 2022 (positional heads; docs/methods.md §5.1)."""
    S = pattern.shape[-1]
    out = pattern.new_zeros(*pattern.shape[:-1], max_offset + 1)
    for d in range(min(max_offset, S - 1) + 1):
        out[..., d:, d] = pattern.diagonal(offset=-d, dim1=-2, dim2=-1)  # entries (q, q - d) for q >= d
    return out


def offset_scores(model: Transformer, tokens: Tensor, max_offset: int = 4, exclude_bos: bool = False) -> Tensor:
    """Returns [layer, head, offset] off_d = mean over prompts and queries q >= d of A[q, q - d], d = 0..max_offset.
    Olsson et al. 2022 (positional / previous-token heads; docs/methods.md §5.1).

    Offsets count backwards only: a causal head at q can read keys k <= q, so a fixed "+k" offset does
    not exist; forward roles exist only relative to an anchor (induction: one after the previous
    occurrence of the current token, see `induction_scores`). A negative max_offset is an error.
    exclude_bos: position 0 is BOS; its key column is dropped, each row renormalised over keys >= 1,
    and off_d averages over q >= d + 1 (rows with all their mass on BOS are left out).
    """
    tokens = _check_tokens(model, tokens)
    S = tokens.shape[1]
    top = S - 1 - int(exclude_bos)
    check_max_offset(max_offset)
    if max_offset > top:
        raise ValueError(f"max_offset={max_offset} needs a query at q - d >= {int(exclude_bos)}, but the tokens have "
                         f"{S} positions; allowed offsets are 0..{top}")
    patterns = attention_patterns(model, tokens)  # [layer, batch, head, q, k]
    q = torch.arange(S)
    valid = q[:, None] >= torch.arange(max_offset + 1) + int(exclude_bos)  # [q, offset]
    if exclude_bos:
        patterns, rows = _without_bos(patterns)
        valid = valid & rows[..., None]  # [layer, batch, head, q, offset]
    profile = offset_profile(patterns, max_offset)  # [layer, batch, head, q, offset]
    valid = valid.expand_as(profile).to(profile.dtype)
    scores = (profile * valid).sum((1, 3)) / valid.sum((1, 3))  # [layer, head, offset]
    _warn_undefined(scores, "offset_scores", "every query put all its attention on BOS, so with exclude_bos no "
                    "row is left to average")
    return scores


def _warn_undefined(scores: Tensor, what: str, why: str) -> None:
    """A RuntimeWarning naming the heads whose score is NaN (undefined), and why."""
    bad = scores.isnan()
    while bad.dim() > 2:
        bad = bad.any(-1)
    if bool(bad.any()):
        where = [f"{l}.{h}" for l, h in bad.nonzero().tolist()]
        warnings.warn(f"{what}: the score of head{'s' if len(where) > 1 else ''} {', '.join(where[:8])}"
                      f"{' ...' if len(where) > 8 else ''} is undefined (NaN): {why}", RuntimeWarning, stacklevel=3)


def argmax_offset(scores: Tensor, min_offset: int = 0, threshold: float | None = None) -> Tensor:
    """Returns [layer, head] the offset d >= min_offset with the largest score; -1 where that score < threshold.
    Olsson et al. 2022 (docs/methods.md §5.1: an "offset-d head" has off_d >= tau and d = argmax)."""
    if not isinstance(scores, Tensor) or scores.dim() < 1:
        raise TypeError(f"scores must be offset_scores' [layer, head, offset] tensor, got {type(scores).__name__}")
    check_int(min_offset, "min_offset", "an int offset")
    if threshold is not None:
        check_real(threshold, "threshold", "a number (the smallest score an offset head needs) or None")
    if not 0 <= min_offset < scores.shape[-1]:
        raise ValueError(f"min_offset={min_offset} is not an offset of these scores; allowed 0..{scores.shape[-1] - 1}")
    best = scores[..., min_offset:].max(-1)  # scores: [layer, head, offset]
    index = best.indices + min_offset
    if threshold is not None:
        index = index.masked_fill(best.values < threshold, -1)
    return index


def previous_token_scores(model: Transformer, tokens: Tensor, exclude_bos: bool = False) -> Tensor:
    """Returns [layer, head] off_1: mean over prompts and queries q >= 1 of A[q, q - 1].
    Olsson et al. 2022 (previous-token heads; docs/methods.md §5.1)."""
    return offset_scores(model, tokens, max_offset=1, exclude_bos=exclude_bos)[..., 1]


def bos_attention_scores(model: Transformer, tokens: Tensor) -> Tensor:
    """Returns [layer, head] mean over prompts and queries q >= 1 of A[q, 0], the attention on position 0.
    Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks" (arXiv:2309.17453)."""
    tokens = _check_tokens(model, tokens, lambda S: S >= 2,
                           lambda S: "bos_attention_scores needs at least 2 positions: query 0 attends only to itself")
    return attention_patterns(model, tokens)[..., 1:, 0].mean((1, 3))


# ---------------------------------------------------------------------------------------------
# Content heads on repeated random tokens, docs/methods.md §5.2 and §5.3.


def repeated_tokens(d_vocab: int, n: int, batch: int, seed: int, prepend_bos: bool,
                    bos_token_id: int | None = None, token_ids=None) -> Tensor:
    """Returns [batch, 2n (+1 with BOS)] [BOS] + r + r, r = n distinct random ids other than BOS.
    Olsson et al. 2022 (repeated random tokens). bos_token_id defaults to d_vocab - 1 (50256 for GPT-2).
    token_ids: the ids r is drawn from (default: the whole vocabulary), e.g. the words a small model knows."""
    check_count(batch, "batch", "the number of random sequences")
    check_seed(seed)
    bos = d_vocab - 1 if bos_token_id is None else bos_token_id
    if token_ids is None:
        pool = range(d_vocab)
    else:
        pool = sorted(set(check_token_ids(token_ids, d_vocab, "token_ids").reshape(-1).tolist()))
        if not [t for t in pool if t != bos]:
            raise ValueError("token_ids holds no id other than BOS; give the ids r may be drawn from")
    candidates = torch.tensor([t for t in pool if t != bos], dtype=torch.long)
    if not is_int(n) or not 1 <= n <= len(candidates):
        raise ValueError(f"n={n} distinct tokens per half are not available: allowed 1..{len(candidates)}")
    generator = torch.Generator().manual_seed(seed)
    halves = torch.stack([candidates[torch.randperm(len(candidates), generator=generator)[:n]] for _ in range(batch)])
    rows = [torch.full((batch, 1), bos)] if prepend_bos else []
    return torch.cat(rows + [halves, halves], dim=1)


def induction_scores(model: Transformer, n: int = 50, batch: int = 10, seed: int = 0, prepend_bos: bool = True,
                     exclude_bos: bool = False, token_ids=None) -> Tensor:
    """Returns [layer, head] ind = mean_{i=1..n} A[n+i, i+1] on [BOS] + r + r (positions shift by -1 without BOS).
    Olsson et al. 2022, "In-context Learning and Induction Heads" (docs/methods.md §5.3, exact index set).

    The query is the second r_i, the key the token after its first occurrence; for i = n that key is the
    first token of the second half, which is correct (ARENA's diagonal adds two non-induction entries).
    Tokens come from `repeated_tokens(d_vocab, n, batch, seed, prepend_bos, token_ids=token_ids)`, so a
    caller can rebuild them; token_ids restricts r to ids the model knows (a small model's trained words).
    exclude_bos (needs prepend_bos): rows renormalised over keys >= 1.
    """
    if exclude_bos and not prepend_bos:
        raise ValueError("exclude_bos=True needs prepend_bos=True: without BOS, position 0 is a real token")
    check_count(n, "n", "the number of random tokens in each half")
    o = int(prepend_bos)
    if 2 * n + o > model.cfg.n_ctx:
        raise ValueError(f"n={n} gives {2 * n + o} positions but the model has n_positions={model.cfg.n_ctx}")
    check_count(batch, "batch", "the number of random sequences")
    check_memory(model.cfg, batch, 2 * n + o, device=model.W_E.device)  # before the tokens are drawn
    tokens = repeated_tokens(model.cfg.d_vocab, n, batch, seed, prepend_bos, model.cfg.bos_token_id
                             if 0 <= model.cfg.bos_token_id < model.cfg.d_vocab else None, token_ids)
    patterns = attention_patterns(model, tokens)
    i = torch.arange(1, n + 1)
    if exclude_bos:
        patterns, _ = _without_bos(patterns)  # a row with all its mass on BOS counts as 0
    return patterns[..., n + i - 1 + o, i + o].mean((1, 3))  # entries (q, k) = (n+i, i+1) with BOS


def duplicate_token_scores(model: Transformer, tokens: Tensor, exclude_bos: bool = False) -> Tensor:
    """Returns [layer, head] the mass sum_{k<q, t_k = t_q} A[q, k], averaged over prompts and the queries q
    whose token occurred before. Wang et al. 2022 (IOI App. I; docs/methods.md §5.2).

    On r + r (with or without BOS, r distinct; see `repeated_tokens`) this is exactly IOI's
    mean_{q in second half} A[q, q - n].
    """
    tokens = _check_tokens(model, tokens)
    S = tokens.shape[1]
    same = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(S, S, dtype=torch.bool).tril(-1)  # [b, q, k]
    if exclude_bos:
        same[:, :, 0] = False
    has_prev = same.any(-1)  # [batch, q]
    if not has_prev.any():
        raise ValueError("no token repeats an earlier one, so there is nothing to score")
    patterns = attention_patterns(model, tokens)  # [layer, batch, head, q, k]
    if exclude_bos:
        patterns, _ = _without_bos(patterns)
    mass = (patterns * same[:, None]).sum(-1)  # [layer, batch, head, q]
    weight = has_prev[:, None].to(mass.dtype)  # [batch, 1, q]
    return (mass * weight).sum((1, 3)) / weight.sum()


# ---------------------------------------------------------------------------------------------
# TransformerLens's head detector, docs/methods.md §5.4.


def detection_pattern(tokens: Tensor, name: str) -> Tensor:
    """Returns [q_pos, k_pos] TransformerLens's 0/1 detection pattern for one prompt's tokens [pos].
    TransformerLens `head_detector` (previous_token_head, duplicate_token_head, induction_head)."""
    S = tokens.shape[-1]
    if name == "previous_token_head":
        return torch.ones(S, S).tril(-1).triu(-1)  # D[q, q-1] = 1
    if name not in HEAD_PATTERNS:
        raise ValueError(f"unknown detection pattern {name!r}; allowed: {', '.join(HEAD_PATTERNS)}, or a tensor")
    dup = (tokens[:, None] == tokens[None, :]).float().tril(-1)  # t_q = t_k and k < q
    if name == "duplicate_token_head":
        return dup
    return torch.cat([torch.zeros(S, 1), dup[:, :-1]], dim=1).tril()  # one column right, first column 0


def detect_head(model: Transformer, tokens: Tensor, detection: str | Tensor, heads=None, cache=None, *,
                exclude_bos: bool = False, exclude_current_token: bool = False, error_measure: str = "mul") -> Tensor:
    """Returns [layer, head] TransformerLens-compatible detector scores, averaged over prompts (-1 for unlisted heads).
    TransformerLens `head_detector.detect_head` (docs/methods.md §5.4), on tokens as given (TL prepends BOS).

    "mul": sum(A * D) / sum(A) after zeroing A's BOS column / diagonal if excluded.
    "abs": 1 - round(sum|A - D| / S, 3), excluded entries of |A - D| zeroed.
    detection: a name in HEAD_PATTERNS or a lower-triangular [pos, pos] (or [batch, pos, pos]) tensor, list or array.
    heads: None (all), a list of (layer, head) or {layer: [heads]}. cache: optional, holding the patterns
    of these tokens (checked against a layer-0 forward). A head whose "mul" score divides by zero (all
    its attention excluded) is NaN, with a warning.
    Unlike TL, which drops the keyword options when given a list of prompts, every prompt uses them here.
    """
    n_ctx = model.cfg.n_ctx
    tokens = _check_tokens(model, tokens, lambda S: 1 < S < n_ctx,
                           lambda S: f"the prompts have {S} tokens; detect_head needs 1 < pos < n_ctx={n_ctx}")
    check_choice(error_measure, "error_measure", ("mul", "abs"))
    pairs = None if heads is None else _check_heads(heads, model.cfg.n_layer, model.cfg.n_head)
    D = _detection_tensor(detection, tokens, error_measure)  # [batch, q, k]
    patterns = attention_patterns(model, tokens) if cache is None else _cached_patterns(model, tokens, cache)
    per_prompt = _detector_scores(patterns, D.to(patterns.dtype), exclude_bos, exclude_current_token, error_measure)
    scores = per_prompt.mean(1)  # [layer, head]
    _warn_undefined(scores, "detect_head", "all its attention fell on excluded entries (BOS or the current token)")
    if heads is None:
        return scores
    out = torch.full_like(scores, -1.0)
    for layer, hs in pairs:
        out[layer, hs] = scores[layer, hs]
    return out


def _detection_tensor(detection, tokens: Tensor, error_measure: str) -> Tensor:
    """detect_head's detection (a pattern name, or a [pos, pos] / [batch, pos, pos] tensor, list or array)
    -> float [batch, q, k], checked: lower-triangular, finite."""
    B, S = tokens.shape
    if isinstance(detection, str):
        return torch.stack([detection_pattern(row, detection) for row in tokens])
    try:
        D = torch.as_tensor(detection, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"detection must be a name ({', '.join(HEAD_PATTERNS)}) or a [pos, pos] tensor of 0/1, "
                        f"got {type(detection).__name__}") from None
    if D.shape not in ((S, S), (1, S, S), (B, S, S)) or not torch.equal(D.nan_to_num(), D.nan_to_num().tril()):
        raise ValueError(f"the detection pattern must be lower-triangular [{S}, {S}] (or [batch, {S}, {S}]) for "
                         f"{S}-token prompts; got shape {tuple(D.shape)}")
    if not bool(D.isfinite().all()):
        raise ValueError("the detection pattern holds NaN or inf; give finite weights (0/1 for error_measure 'mul')")
    if error_measure == "mul" and not set(D.unique().tolist()) <= {0.0, 1.0}:
        warnings.warn("detection pattern has values other than 0 or 1 with error_measure 'mul'")
    return D.expand(B, S, S)


def _cached_patterns(model: Transformer, tokens: Tensor, cache) -> Tensor:
    """[layer, batch, head, q, k] patterns from a user's cache, after checking it holds them for these tokens:
    its layer-0 pattern must equal a fresh layer-0 forward on tokens (a cache of other prompts would
    silently score those)."""
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layer)]
    missing = [name for name in names if name not in cache]
    if missing:
        raise KeyError(f"detect_head: the cache has no {missing[0]}; pass cache=None, or a cache from "
                       "run_with_cache(tokens) whose names_filter keeps every attn.hook_pattern")
    patterns = torch.stack([cache[name] for name in names])
    B, S = tokens.shape
    if patterns.shape[1] != B or patterns.shape[-1] != S:
        raise ValueError(f"detect_head: the cache's patterns are for {patterns.shape[1]} prompts of "
                         f"{patterns.shape[-1]} tokens, but tokens has shape {(B, S)}; cache the same tokens")
    _, fresh = model.run_with_cache(tokens, names_filter=names[0], stop_at_layer=1)
    if not torch.allclose(fresh[names[0]].to(patterns.dtype), patterns[0], atol=1e-4, rtol=1e-3):
        raise ValueError("detect_head: the cache's patterns were not computed from these tokens (layer 0 differs "
                         "from a forward on them); pass the cache of run_with_cache(tokens), or cache=None")
    return patterns


def _detector_scores(A: Tensor, D: Tensor, exclude_bos: bool, exclude_current_token: bool,
                     error_measure: str) -> Tensor:
    """A [layer, batch, head, q, k] patterns, D [batch, q, k] detection -> [layer, batch, head] TL detector scores."""
    S = A.shape[-1]
    D = D[None, :, None]  # [1, batch, 1, q, k]
    if error_measure == "mul":
        A = A.clone()
        if exclude_bos:
            A[..., 0] = 0
        if exclude_current_token:
            A.diagonal(dim1=-2, dim2=-1).zero_()
        return (A * D).sum((-2, -1)) / A.sum((-2, -1))
    diff = (A - D).abs()
    if exclude_bos:
        diff[..., 0] = 0
    if exclude_current_token:
        diff.diagonal(dim1=-2, dim2=-1).zero_()
    raw = diff.mean((-2, -1)) * S  # TL's arithmetic, so its 3-decimal rounding lands the same way
    return torch.tensor([[[1 - round(v, 3) for v in hs] for hs in b] for b in raw.tolist()])


# ---------------------------------------------------------------------------------------------
# Subject/object role swap, docs/methods.md §5.5.


@dataclass(kw_only=True, repr=False)
class RoleSwap(Result):
    """Pattern changes between a prompt and its role-swapped twin, averaged over prompts and queries.

    scores [layer, head]: the role index R = tv_tok - tv_pos in [-1, 1]; > 0 role head, < 0 lexical head."""

    axes: tuple = ("layer", "head")
    tv_pos: Tensor  # [layer, head] 1/2 sum_k |A[q,k] - A'[q,k]|: large when attention follows the token
    tv_tok: Tensor  # [layer, head] 1/2 sum_k |A[q,k] - A'[q,pi(k)]|: large when attention follows the slot
    query_positions: list[int]
    most_changed: list[tuple[int, int, float]]  # (layer, head, tv_pos), largest tv_pos first

    @property
    def role_index(self) -> Tensor:
        """[layer, head] R = tv_tok - tv_pos: the scores, by their name in the role-swap test."""
        return self.scores


def role_swap(model: Transformer, tokens_a: Tensor, tokens_b: Tensor, swap_positions: tuple[int, int],
              query_positions=None, top: int = 5) -> RoleSwap:
    """Returns RoleSwap with [layer, head] TV_pos, TV_tok and R = TV_tok - TV_pos (its scores) for prompts whose
    tokens at a, b swap. Wang et al. 2022 (IOI) minimal pairs; role-swap test as defined in docs/methods.md §5.5.

    tokens_b must equal tokens_a with positions a and b exchanged, token by token; a == b is the identity
    swap (both TVs 0). query_positions default to every q >= max(a, b). Both prompts run as one batch,
    tokens_a first. top: how many heads most_changed lists.
    """
    tokens_a, tokens_b = _check_tokens(model, tokens_a), _check_tokens(model, tokens_b)
    if tokens_a.shape != tokens_b.shape:
        raise ValueError(f"tokens_a has shape {tuple(tokens_a.shape)} but tokens_b has {tuple(tokens_b.shape)}; "
                         "a role swap compares the two prompts token by token, so they must have equal lengths")
    S = tokens_a.shape[1]
    if not isinstance(swap_positions, (tuple, list)) or len(swap_positions) != 2:
        raise ValueError(f"swap_positions must be two positions (a, b) whose tokens swap, got {swap_positions!r}")
    a, b = check_positions(swap_positions, S, "swap_positions").tolist()
    check_count(top, "top", "how many heads most_changed lists")
    perm = torch.arange(S)
    perm[a], perm[b] = b, a  # pi: a <-> b
    wrong = (tokens_b != tokens_a[:, perm]).nonzero().tolist()
    if wrong:
        where = ", ".join(f"prompt {i} position {p}" for i, p in wrong[:8]) + (" ..." if len(wrong) > 8 else "")
        raise ValueError(f"tokens_b is not tokens_a with positions {a} and {b} swapped: they differ at {where}")
    if query_positions is None:
        queries = list(range(max(a, b), S))
    else:
        queries = check_positions(query_positions, S, "query_positions").reshape(-1).tolist()
        if not queries:
            raise ValueError("query_positions is empty; give None (every q >= max(a, b)) or at least one position")
    patterns = attention_patterns(model, torch.cat([tokens_a, tokens_b]))  # [layer, 2 batch, head, q, k]
    A, A2 = patterns[:, :len(tokens_a), :, queries], patterns[:, len(tokens_a):, :, queries]
    tv_pos = 0.5 * (A - A2).abs().sum(-1).mean((1, 3))  # [layer, head]
    tv_tok = 0.5 * (A - A2[..., perm]).abs().sum(-1).mean((1, 3))
    order = sorted(((tv_pos[l, h].item(), l, h) for l in range(tv_pos.shape[0]) for h in range(tv_pos.shape[1])),
                   reverse=True)
    return RoleSwap(scores=tv_tok - tv_pos, tv_pos=tv_pos, tv_tok=tv_tok, query_positions=queries,
                    most_changed=[(l, h, v) for v, l, h in order[:top]], metric="role index R = TV_tok - TV_pos")
