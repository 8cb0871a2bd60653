"""Checks of what a user passes to minitx: token ids, positions, counts, integers, attention masks,
generation arguments. This is the only home of argument checks; every module calls these.

Each failure says what was wrong and what is allowed, in one line (the table: docs/bad-inputs.md).

    describe(value)                                 a one-line description of an argument, for messages
    check_integers(value, what, allowed)            TypeError unless ints (no bools, no floats)
    check_int(value, what, allowed)                 TypeError unless one int; check_real: one real number
    check_count(value, what, meaning, minimum=1)    an int >= minimum (1: a count)
    check_choice(value, what, allowed)              one of a few named options (strings)
    check_max_offset(max_offset)                    an int offset >= 0 (heads look back only)
    check_index(value, size, what, plural)          an int in 0..size-1 (a layer, a head)
    check_positions(pos, n_pos, what, batch=None)   positions (negative from the end) -> LongTensor >= 0
    check_seed(seed)                                an int seed torch's generators accept
    check_device(device, what)                      a torch device this machine has -> torch.device
    check_token_ids(ids, d_vocab, what, batch=None) token ids in the vocabulary -> LongTensor
    check_tokens(tokens, d_vocab)                   a prompt batch [batch, pos] (or [pos]) of ids
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor


def describe(value) -> str:
    """A short one-line description of an argument for error messages: its type and value, or a tensor's dtype."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}" if value.dim() else \
            f"a {value.dtype} tensor {value.item()!r}"
    text = " ".join(repr(value).split())  # one line, whatever the repr
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:39] + '…'}"


def check_integers(value, what: str, allowed: str) -> None:
    """TypeError naming `what` and saying what is `allowed` unless value is an int, a (nested) list or tuple
    of ints, or an integer tensor. Bools and floats are refused, so no id or position is silently truncated."""
    if isinstance(value, Tensor):
        ok = not (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool)
    elif isinstance(value, (list, tuple, range)) or hasattr(value, "__array__"):  # also numpy arrays
        try:
            as_tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            ok = False
        else:
            ok = as_tensor.numel() == 0 or not (as_tensor.dtype.is_floating_point or as_tensor.dtype == torch.bool)
    else:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok:
        raise TypeError(f"{what} must be {allowed}, got {describe(value)}")


def is_int(value) -> bool:
    """An integer that is not a bool (True is an int to Python, never a count or an index here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value, what: str, allowed: str) -> None:
    """TypeError naming `what` and saying what is `allowed` unless value is one int (not a bool, list or tensor)."""
    if not is_int(value):
        raise TypeError(f"{what} must be {allowed}, got {describe(value)}")


def check_real(value, what: str, allowed: str) -> None:
    """TypeError unless value is one real number (an int or a float, not a bool, a string or a tensor)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be {allowed}, got {describe(value)}")


def check_index(value, size: int, what: str, plural: str) -> None:
    """ValueError unless value is an int in 0..size-1: "layer 5 is out of range; this model has layers 0..1"."""
    if not is_int(value) or not 0 <= value < size:
        raise ValueError(f"{what} {value!r} is out of range; this model has {plural} 0..{size - 1}")


def check_count(value, what: str, meaning: str, minimum: int = 1) -> None:
    """ValueError unless value is an int >= minimum (not a bool, a float or a string):
    "n_pairs=2: prompt pairs per dataset, an int >= 8"."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{what}={value!r}: {meaning}, an int >= {minimum}")


def check_choice(value, what: str, allowed: tuple) -> None:
    """ValueError unless value is one of `allowed`: "bias='none'; allowed: 'per_layer', 'summed'"."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what}={value!r}; allowed: {', '.join(map(repr, allowed))}")


def check_max_offset(max_offset) -> None:
    """TypeError unless max_offset is an int, ValueError if < 0 (offsets count backwards only)."""
    check_int(max_offset, "max_offset", "an int >= 0")
    if max_offset < 0:
        raise ValueError(f"max_offset={max_offset}: offsets are d = q - k >= 0, because a causal head at query q "
                         "sees only keys k <= q; a '+k' role exists only relative to an anchor token "
                         "(induction: one after the previous occurrence), see induction_scores")


def _integer_values(value, what: str, kind: str, batch: int | None) -> Tensor:
    """An int, a list of ints or an integer tensor -> LongTensor (on the tensor's device).

    With batch: one value per prompt, an int (or 0-d tensor) for every prompt or a 1-d [batch] -> [batch]."""
    allowed = f"an int or a LongTensor [batch] of {kind}" if batch is not None else f"an int or a list of {kind}"
    if isinstance(value, Tensor) and (value.dtype.is_floating_point or value.dtype.is_complex
                                      or value.dtype == torch.bool or (batch is not None and value.dim() > 1)):
        raise ValueError(f"{what} as a tensor must be integer {kind} of shape [batch]"
                         f"{f'=[{batch}]' if batch is not None else ''}, got {value.dtype} {tuple(value.shape)}")
    check_integers(value, what, allowed)
    values = value.long() if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.long)
    if batch is None:
        return values
    if values.dim() == 0:
        return values.expand(batch)
    if values.shape != (batch,):
        raise ValueError(f"{what} must be an int or one of {kind} per prompt, of shape [batch]=[{batch}]; "
                         f"got shape {tuple(values.shape)}")
    return values


def check_positions(pos, n_pos: int, what: str = "pos", batch: int | None = None) -> Tensor:
    """Positions in prompts of n_pos tokens (negative counts from the end) -> LongTensor of positions 0..n_pos-1.

    pos: an int, a list of ints or an integer tensor, any shape; with `batch`, one position per prompt
    (an int for all, or [batch]) -> [batch]. The one position check of minitx: every module calls it."""
    values = _integer_values(pos, what, "positions", batch)
    bad = (values < -n_pos) | (values >= n_pos)
    if bool(bad.any()):
        named = "" if what in ("pos", "positions") else f"{what}: "
        raise ValueError(f"{named}position {int(values[bad][0])} is out of range for prompts of {n_pos} tokens; "
                         f"allowed: {-n_pos}..{n_pos - 1}")
    return values % n_pos


def check_token_ids(ids, d_vocab: int, what: str = "token", batch: int | None = None) -> Tensor:
    """Token ids in 0..d_vocab-1 (an int, a list or an integer tensor, any shape) -> LongTensor.

    With `batch`, one id per prompt (an int for all, or [batch]) -> [batch]. Messages read "{what} id 7 ..."."""
    values = _integer_values(ids, what, "ids", batch)
    bad = (values < 0) | (values >= d_vocab)
    if bool(bad.any()):
        raise ValueError(f"{what} id {int(values[bad][0])} is outside the vocabulary; allowed ids are 0..{d_vocab - 1}")
    return values


def check_tokens(tokens, d_vocab: int) -> Tensor:
    """tokens [batch, pos] or [pos] of ids in 0..d_vocab-1 -> LongTensor [batch, pos]."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a LongTensor [batch, pos] of token ids, got {type(tokens).__name__}; "
                        "use minitx.to_tokens(text, prepend_bos=...) for text")
    _check_dense(tokens, "tokens")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    tokens = tokens.long()  # every integer dtype: int8 .. uint64 (ids beyond int64 are outside any vocabulary)
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be [batch, pos] with at least one token, got shape {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= d_vocab:
        raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary; allowed ids are 0..{d_vocab - 1}")
    return tokens


def _check_dense(x: Tensor, what: str) -> None:
    """A tensor with values: strided (not sparse) and not on the meta device."""
    if x.layout != torch.strided:
        raise TypeError(f"{what} must be a dense tensor, got layout {x.layout}; use .to_dense()")
    if x.device.type == "meta":
        raise ValueError(f"{what} must hold values, got a tensor on the meta device (shapes only)")


def check_attention_mask(attention_mask, shape) -> None:
    """None, or a 0/1 tensor of exactly the tokens' [batch, pos] shape."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor):
        raise TypeError(f"attention_mask must be a tensor [batch, pos] of 0/1, got {type(attention_mask).__name__}")
    _check_dense(attention_mask, "attention_mask")
    if attention_mask.shape != shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs "
                         f"{tuple(shape)}: one 0/1 entry per token")
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1 (1 = real token, 0 = padding)")


def check_prompt_rows(mask) -> None:
    """generate continues each row from its last real token: every row needs one."""
    if not bool(mask.any(1).all()):
        raise ValueError(f"attention_mask row {int((~mask.bool().any(1)).nonzero()[0])} has no real token, so "
                         "there is nothing to continue; give every prompt at least one token")


def check_generation(n_prompt: int, max_new_tokens: int, temperature: float, top_k, eos_token_id, cfg) -> None:
    """generate's arguments: types first (a float count or a str temperature is a TypeError naming it), then values."""
    if not is_int(max_new_tokens):
        raise TypeError(f"max_new_tokens must be an int >= 0, got {describe(max_new_tokens)}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number >= 0 (0 = greedy), got {describe(temperature)}")
    if top_k is not None and not is_int(top_k):
        raise TypeError(f"top_k must be a positive int or None, got {describe(top_k)}")
    if eos_token_id is not None and not is_int(eos_token_id):
        raise TypeError(f"eos_token_id must be an int token id or None, got {describe(eos_token_id)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not temperature >= 0:  # also refuses NaN
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be a positive integer or None")
    if eos_token_id is not None and not 0 <= eos_token_id < cfg.d_vocab:
        raise ValueError(f"eos_token_id={eos_token_id} is outside the vocabulary 0..{cfg.d_vocab - 1}")
    if n_prompt + max_new_tokens > cfg.n_ctx:
        raise ValueError(f"{n_prompt} prompt tokens + {max_new_tokens} new ones exceed n_positions={cfg.n_ctx}; "
                         f"allowed: max_new_tokens 0..{max(cfg.n_ctx - n_prompt, 0)} for this prompt")


def check_keep_last(keep_last, n_pos: int, n_blocks: int) -> None:
    """keep_last: a positive int no larger than the positions run, and at least one block to run."""
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or not 1 <= keep_last <= n_pos:
        raise ValueError(f"keep_last={keep_last!r} is not allowed: an int from 1 to the {n_pos} positions run")
    if n_blocks == 0:
        raise ValueError("keep_last applies to the last block a call runs, and this call runs none "
                         "(start_at_layer == stop_at_layer)")


def check_seed(seed, what: str = "seed") -> None:
    """A random seed: an int in 0..2**64-1 (what torch.Generator.manual_seed takes)."""
    check_int(seed, what, "an int from 0 to 2**64-1")
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"{what}={seed!r} is not allowed: an int from 0 to 2**64-1")


def check_device(device, what: str = "device") -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'mps' (or a torch.device) that this machine can hold tensors on -> torch.device.
    ValueError: "device cuda: cuda is not available here; use cpu"; a name torch does not know lists the kinds."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what} {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "meta":
        raise ValueError(f"{what} {parsed}: the meta device holds shapes only, no values; use cpu")
    try:
        torch.empty(0, device=parsed)  # an unavailable backend ("cuda" without a GPU) fails here
    except (RuntimeError, AssertionError, NotImplementedError):
        if parsed.type == "cuda" and torch.cuda.is_available():
            raise ValueError(f"{what} {parsed}: this machine has cuda devices 0..{torch.cuda.device_count() - 1}; "
                             "use one of them or cpu") from None
        raise ValueError(f"{what} {parsed}: {parsed.type} is not available here; use cpu") from None
    return parsed


def check_layer_range(start_at_layer, stop_at_layer, n_layer: int) -> tuple[int, int]:
    """start_at_layer/stop_at_layer of a forward (ints or None) -> (start, stop), 0 <= start <= stop <= n_layer."""
    for name, value in (("start_at_layer", start_at_layer), ("stop_at_layer", stop_at_layer)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int (a block index 0..{n_layer}) or None, got {describe(value)}")
    start = start_at_layer or 0
    stop = n_layer if stop_at_layer is None else stop_at_layer
    if not (0 <= start <= stop <= n_layer):
        raise ValueError(f"start_at_layer={start_at_layer}, stop_at_layer={stop_at_layer} are not allowed; "
                         f"need 0 <= start <= stop <= n_layer={n_layer}")
    return start, stop


def check_context(positions: Tensor, n_ctx: int) -> Tensor:
    """positions [batch or 1, pos], returned, unless one reaches n_ctx: the model has no embedding for it."""
    if int(positions.max()) >= n_ctx:
        raise ValueError(f"the sequence reaches position {int(positions.max())}, but this model has n_positions="
                         f"{n_ctx} (positions 0..{n_ctx - 1}); shorten the prompt")
    return positions


def check_residual(resid, d_model: int, like: Tensor) -> Tensor:
    """The input of a forward with start_at_layer: a dense [batch, pos, d_model] tensor of the model's dtype and device."""
    if not isinstance(resid, Tensor) or resid.dim() != 3 or resid.shape[-1] != d_model or resid.dtype != like.dtype \
            or resid.layout != torch.strided or resid.device != like.device:
        got = f"shape {tuple(resid.shape)}, {resid.dtype} on {resid.device}" if isinstance(resid, Tensor) \
            else type(resid).__name__
        raise ValueError(f"with start_at_layer the input is a residual stream [batch, pos, {d_model}], "
                         f"{like.dtype} on {like.device}; got {got}")
    return resid


def check_sweep_options(resid: Tensor, cfg, start_at_layer, n_blocks: int, past_kv, keep_last, start_at_mid,
                        attention_mask) -> int:
    """The forward options that serve sweeps (past_kv, keep_last, start_at_mid) -> n_past (0 without past_kv)."""
    if past_kv is not None:
        if start_at_layer is None or attention_mask is not None or not isinstance(past_kv, (list, tuple)) \
                or len(past_kv) != n_blocks:
            raise ValueError(f"past_kv needs start_at_layer, no attention_mask, and one (k, v) per block run "
                             f"({n_blocks}); got {describe(past_kv)}")
        batch = resid.shape[0]
        for k_v in past_kv:
            if not (isinstance(k_v, (list, tuple)) and len(k_v) == 2 and all(
                    isinstance(t, Tensor) and t.dim() == 4 and t.shape[0] == batch and t.dtype == resid.dtype
                    and t.shape[2:] == (cfg.n_head, cfg.d_head) and t.shape[1] == past_kv[0][0].shape[1] for t in k_v)):
                raise ValueError(f"past_kv: each block's (k, v) must be two {resid.dtype} tensors [batch={batch}, "
                                 f"n_past, head={cfg.n_head}, d_head={cfg.d_head}], the same n_past for every block")
    if start_at_mid and (start_at_layer is None or n_blocks == 0 or past_kv is not None):
        raise ValueError("start_at_mid needs start_at_layer, at least one block to run, and no past_kv")
    if keep_last is not None:
        check_keep_last(keep_last, resid.shape[1], n_blocks)
    return 0 if past_kv is None else past_kv[0][0].shape[1]
