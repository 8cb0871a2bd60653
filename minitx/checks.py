"""Checks of what a user passes to the model: its config, token ids, attention masks, generation arguments.

Each failure says what was wrong and what is allowed, in one line (the table: docs/bad-inputs.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_config(cfg, activations) -> None:
    """A GPT-2 Config whose fields make a model: positive sizes, heads dividing the width, a known activation."""
    for field in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        value = getattr(cfg, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config {field}={value!r} is not allowed: it must be a positive integer")
    if cfg.n_inner is not None and (not isinstance(cfg.n_inner, int) or cfg.n_inner < 1):
        raise ValueError(f"config n_inner={cfg.n_inner!r} is not allowed: a positive integer or null")
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"config n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}; "
                         "each head needs an equal share of the model width")
    if cfg.activation_function not in activations:
        raise ValueError(f"config activation_function={cfg.activation_function!r} is not supported; "
                         f"allowed: {', '.join(sorted(activations))}")
    if not cfg.layer_norm_epsilon > 0:
        raise ValueError(f"config layer_norm_epsilon={cfg.layer_norm_epsilon!r} must be > 0")


def check_tokens(tokens, d_vocab: int) -> Tensor:
    """tokens [batch, pos] or [pos] of ids in 0..d_vocab-1 -> LongTensor [batch, pos]."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a LongTensor [batch, pos] of token ids, got {type(tokens).__name__}; "
                        "use minitx.to_tokens(text, prepend_bos=...) for text")
    if tokens.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be [batch, pos] with at least one token, got shape {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= d_vocab:
        raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary; allowed ids are 0..{d_vocab - 1}")
    return tokens.long()


def check_attention_mask(attention_mask, shape) -> None:
    """None, or a 0/1 tensor of exactly the tokens' [batch, pos] shape."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor):
        raise TypeError(f"attention_mask must be a tensor [batch, pos] of 0/1, got {type(attention_mask).__name__}")
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
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not temperature >= 0:  # also refuses NaN
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be a positive integer or None")
    if eos_token_id is not None and not 0 <= eos_token_id < cfg.d_vocab:
        raise ValueError(f"eos_token_id={eos_token_id} is outside the vocabulary 0..{cfg.d_vocab - 1}")
    if n_prompt + max_new_tokens > cfg.n_ctx:
        raise ValueError(f"{n_prompt} prompt tokens + {max_new_tokens} new ones exceed n_positions={cfg.n_ctx}")


def check_keep_last(keep_last, n_pos: int, n_blocks: int) -> None:
    """keep_last: a positive int no larger than the positions run, and at least one block to run."""
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or not 1 <= keep_last <= n_pos:
        raise ValueError(f"keep_last={keep_last!r} is not allowed: an int from 1 to the {n_pos} positions run")
    if n_blocks == 0:
        raise ValueError("keep_last applies to the last block a call runs, and this call runs none "
                         "(start_at_layer == stop_at_layer)")
