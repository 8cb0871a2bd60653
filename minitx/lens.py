"""The logit lens: read every layer's residual stream through the final layer norm and the unembedding.

`logit_lens` applies LN_f with the statistics of the state being read (its own mean and variance) and
the learned gain and bias, then W_U, so the entry for the final residual is the model's logits.
`cached_scale_lens` is the older TransformerLens variant that divides every state by the FINAL
state's cached scale; it is kept under a different name for comparison and is not the logit lens.
`summarize_lens` turns any stack of per-layer logits into the tuned-lens metrics (nats, 0-based ranks).

References: nostalgebraist 2020, "interpreting GPT: the logit lens" (LessWrong); Belrose et al. 2023,
"Eliciting Latent Predictions from Transformers with the Tuned Lens" (arXiv:2303.08112), for the
metrics; METHODS §4.1 and §4.3.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from minitx.metrics import check_integers
from minitx.model import Run, Transformer

POSITIONS = "None (all), an int or a list of ints (negative counts from the end)"
TARGETS = "token ids (an int, a list of ints or an integer tensor broadcastable to [batch, pos]) or 'next'"


@dataclass
class LensResult:
    """Per-layer readouts; the first axis follows `labels` ("0_pre", ["0_mid",] ..., "final")."""

    labels: list[str]
    positions: Tensor  # [pos] the positions read, as non-negative indices
    logits: Tensor  # [layer+1, batch, pos, d_vocab]
    top_tokens: Tensor  # [layer+1, batch, pos, top_k] ids, most probable first
    top_probs: Tensor  # [layer+1, batch, pos, top_k]
    kl_to_final: Tensor  # [layer+1, batch, pos] KL(p_final || p_layer) in nats; 0 at "final"
    entropy: Tensor  # [layer+1, batch, pos] H(p_layer) in nats
    target_probs: Tensor | None = None  # [layer+1, batch, pos] p_layer(target)
    target_ranks: Tensor | None = None  # [layer+1, batch, pos] ids with a strictly larger logit (0 = top-1)

    def log_probs(self) -> Tensor:
        """Returns [layer+1, batch, pos, d_vocab] log-probabilities (computed on request, to save memory)."""
        return self.logits.log_softmax(-1)


def lens_labels(n_layer: int, incl_mid: bool = False) -> list[str]:
    """Returns [layer+1 (or 2*layer+1)] labels "0_pre", ["0_mid",] ..., "final", TransformerLens's order.
    nostalgebraist 2020, "interpreting GPT: the logit lens"."""
    per_layer = [[f"{l}_pre", f"{l}_mid"] if incl_mid else [f"{l}_pre"] for l in range(n_layer)]
    return [label for pair in per_layer for label in pair] + ["final"]


def _point_names(n_layer: int, incl_mid: bool) -> list[str]:
    names = []
    for l in range(n_layer):
        names += [f"blocks.{l}.hook_resid_pre"] + ([f"blocks.{l}.hook_resid_mid"] if incl_mid else [])
    return names + [f"blocks.{n_layer - 1}.hook_resid_post"]


def _positions(positions, seq_len: int) -> Tensor:
    if positions is None:
        return torch.arange(seq_len)
    check_integers(positions, "positions", POSITIONS)
    pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if not len(pos):
        raise ValueError(f"positions is empty; give None (all) or at least one of -{seq_len}..{seq_len - 1}")
    bad = pos[(pos < -seq_len) | (pos >= seq_len)]
    if len(bad):
        raise ValueError(f"position {int(bad[0])} is out of range; allowed -{seq_len}..{seq_len - 1}")
    return pos % seq_len


def _residuals(model: Transformer, tokens: Tensor, incl_mid: bool, positions, scale: bool = False):
    """Returns ([layer+1, batch, pos, d_model] residual states at the chosen positions, [pos] positions,
    [batch, pos, 1] the final residual's cached ln_final scale, or None unless asked)."""
    names = _point_names(model.cfg.n_layer, incl_mid)
    pos = _positions(positions, tokens.shape[1])  # checked before the forward runs
    # Asking for the scale makes ln_final take its explicit path; the lens alone leaves the forward as is.
    _, cache = model.run_with_cache(tokens, names_filter=names + (["ln_final.hook_scale"] if scale else []))
    stack = torch.stack([cache[name][:, pos] for name in names])
    return stack, pos, cache["ln_final.hook_scale"][:, pos] if scale else None


def summarize_lens(logits: Tensor, targets: Tensor | None = None, top_k: int = 5, labels=None,
                   positions: Tensor | None = None) -> LensResult:
    """Returns LensResult for logits [layer+1, batch, pos, d_vocab] whose last entry is the model's output.
    Belrose et al. 2023, "Eliciting Latent Predictions ..." (KL to final, entropy, in nats; ranks as TL 4.3).

    targets: token ids broadcastable to [batch, pos] (e.g. [batch, 1] for one answer per prompt).
    Rank = number of ids with a strictly larger logit, so ties share the better rank.
    """
    _check_top_k(top_k)
    t = None if targets is None else _targets(targets, logits.shape[1:3], logits.shape[-1])
    log_probs = logits.log_softmax(-1)  # [layer+1, batch, pos, d_vocab]
    probs = log_probs.exp()
    final = log_probs[-1]
    kl = (final.exp() * (final - log_probs)).sum(-1)  # KL(p_final || p_layer)
    entropy = -(probs * log_probs).sum(-1)
    top = probs.topk(min(top_k, logits.shape[-1]), dim=-1)
    result = LensResult(labels=list(labels) if labels is not None else [str(i) for i in range(len(logits))],
                        positions=torch.arange(logits.shape[2]) if positions is None else positions,
                        logits=logits, top_tokens=top.indices, top_probs=top.values, kl_to_final=kl, entropy=entropy)
    if t is not None:
        index = t[None, ..., None].expand(len(logits), -1, -1, 1)
        target_logit = logits.gather(-1, index)  # [layer+1, batch, pos, 1]
        result.target_probs = probs.gather(-1, index)[..., 0]
        result.target_ranks = (logits > target_logit).sum(-1)
    return result


def _check_top_k(top_k) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} must be a positive int (how many top tokens to keep per position)")


def _targets(targets, shape, d_vocab: int) -> Tensor:
    """ids broadcastable to [batch, pos] -> LongTensor [batch, pos]; clear errors for floats, bad shapes, bad ids."""
    check_integers(targets, "targets", TARGETS)
    t = torch.as_tensor(targets).long()
    try:
        t = t.expand(*shape)
    except RuntimeError:
        raise ValueError(f"targets has shape {tuple(t.shape)}, which does not broadcast to [batch, pos]="
                         f"{list(shape)} (e.g. [batch, 1] for one target per prompt)") from None
    bad = t[(t < 0) | (t >= d_vocab)]
    if len(bad):
        raise ValueError(f"targets: token id {int(bad[0])} is outside the vocabulary; allowed ids are 0..{d_vocab - 1}")
    return t


def _next_tokens(tokens: Tensor, pos: Tensor) -> Tensor:
    if int(pos.max()) >= tokens.shape[1] - 1:
        raise ValueError(f"targets='next' has no next token at position {int(pos.max())}; "
                         f"restrict positions to 0..{tokens.shape[1] - 2}")
    return tokens[:, pos + 1]


def logit_lens(model: Transformer, tokens: Tensor, targets: Tensor | str | None = None, top_k: int = 5,
               incl_mid: bool = False, positions=None) -> LensResult:
    """Returns LensResult, logits [layer+1, batch, pos, d_vocab]: LN_f(h) W_U at every resid_pre and the final resid.
    nostalgebraist 2020, "interpreting GPT: the logit lens" (METHODS §4.1).

    LN_f uses each state's OWN mean and variance with the learned gain and bias (the model's
    `unembed`), so the "final" entry equals the model's logits (bit for bit with positions=None; to float
    rounding when fewer rows go through the matmul). incl_mid adds each resid_mid.
    positions: None (all), an int or a list of ints (negative counts from the end); restricting
    them bounds memory, which grows as layers x batch x pos x d_vocab.
    targets: ids broadcastable to [batch, pos] (positions as selected), or "next" for tokens[:, p + 1].
    """
    tokens = model._check_tokens(tokens)
    if isinstance(targets, str):
        if targets != "next":
            raise ValueError(f"targets={targets!r}; use token ids or 'next'")
    elif targets is not None:
        check_integers(targets, "targets", TARGETS)
    _check_top_k(top_k)
    stack, pos, _ = _residuals(model, tokens, incl_mid, positions)
    no_hooks = Run()  # the lens is the model's own unembed, without this call's hooks
    logits = torch.stack([model.unembed(resid, no_hooks) for resid in stack])  # [layer+1, batch, pos, d_vocab]
    if isinstance(targets, str):
        targets = _next_tokens(tokens, pos)
    return summarize_lens(logits, targets, top_k, lens_labels(model.cfg.n_layer, incl_mid), pos)


def cached_scale_lens(model: Transformer, tokens: Tensor, incl_mid: bool = False, positions=None) -> Tensor:
    """Returns [layer+1, batch, pos, d_vocab] logits of the cached-scale variant: NOT the logit lens.
    TransformerLens before PR #1180, `accumulated_resid(apply_ln=True)` (METHODS §4.3; TL issue #1076).

    Each state is centred on its own mean but divided by the FINAL residual's cached LN scale
    (ln_final.hook_scale), then gain, bias and W_U are applied (what TL's folded W_U did). Early layers
    then look nearly uniform. Use it to reproduce old TL notebooks; use `logit_lens` otherwise.
    Labels: `lens_labels(n_layer, incl_mid)`.
    """
    tokens = model._check_tokens(tokens)
    stack, _, scale = _residuals(model, tokens, incl_mid, positions, scale=True)  # scale: [batch, pos, 1]
    ln = model.ln_final
    normalized = (stack - stack.mean(-1, keepdim=True)) / scale * ln.w + ln.b  # [layer+1, batch, pos, d_model]
    return normalized @ model.W_U
