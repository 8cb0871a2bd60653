"""Metrics on logits: each maps logits [batch, pos, d_vocab] to one value per prompt, [batch].

Logit difference is the default (Zhang & Nanda 2023, "Towards Best Practices of Activation Patching",
arXiv:2309.16042; Heimersheim & Nanda 2024, "How to use and interpret activation patching",
arXiv:2404.15255): it is linear in the residual stream once the final LN scale is fixed and can show
negative components. Log-prob saturates once the answer is top-1; probability is exponential in the
logits. KL(P_clean || P) is ACDC's metric (Conmy et al. 2023). `normalized` is the patching score of
Wang et al. 2022 (IOI) and TL's `normalize_patched_logit_diff`: a ratio of batch means.

Positions: an int (the same for every prompt; negative counts from the end) or a LongTensor [batch].
Answer ids: an int or a LongTensor [batch].

The `*_metric` factories and `kl_to` return a `Metric`: a callable that also says which position it
reads, so patching sweeps can unembed only that position (`Metric.at_pos` takes [batch, d_vocab]).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

from minitx.checks import check_integers, check_positions, check_real, check_token_ids, check_tokens


def logits_at(logits: Tensor, pos: int | Tensor = -1) -> Tensor:
    """logits [batch, pos, d_vocab] -> the logits at each prompt's position, [batch, d_vocab]."""
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be [batch, pos, d_vocab], got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    index = check_positions(pos, logits.shape[1], batch=logits.shape[0]).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), index]


def _pick(x: Tensor, ids: int | Tensor, what: str) -> Tensor:  # x [batch, d_vocab] -> [batch]
    if type(ids) is int and 0 <= ids < x.shape[-1]:  # one valid id for every prompt: nothing to check (sweeps call
        return x[:, ids]                             # this once per patch, so the check's cost showed there)
    ids = check_token_ids(ids, x.shape[-1], what, batch=x.shape[0]).to(x.device)
    return x.gather(-1, ids[:, None])[:, 0]


# -- the metrics, on logits already taken at the read position: [batch, d_vocab] -> [batch] ---------
def _logit_diff_at(x: Tensor, answer, wrong) -> Tensor:
    return _pick(x, answer, "answer") - _pick(x, wrong, "wrong")


def _log_prob_at(x: Tensor, answer) -> Tensor:
    return _pick(x.log_softmax(-1), answer, "answer")


def logit_diff(logits: Tensor, answer: int | Tensor, wrong: int | Tensor, pos: int | Tensor = -1) -> Tensor:
    """Returns [batch]: logit[answer] - logit[wrong] at `pos`."""
    return _logit_diff_at(logits_at(logits, pos), answer, wrong)


def log_prob(logits: Tensor, answer: int | Tensor, pos: int | Tensor = -1) -> Tensor:
    """Returns [batch]: log p(answer) at `pos`, in nats."""
    return _log_prob_at(logits_at(logits, pos), answer)


def prob(logits: Tensor, answer: int | Tensor, pos: int | Tensor = -1) -> Tensor:
    """Returns [batch]: p(answer) at `pos`."""
    return log_prob(logits, answer, pos).exp()


def next_token_loss(logits: Tensor, tokens: Tensor, per_token: bool = False) -> Tensor:
    """Returns the next-token cross-entropy in nats: logits at position i [batch, pos, d_vocab] scored against
    tokens[:, i + 1]; the mean over every prediction, or [batch, pos - 1] with per_token=True.
    TransformerLens's `model(tokens, return_type="loss")` (and `loss_per_token=True`)."""
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        raise ValueError(f"logits must be [batch, pos, d_vocab], got "
                         f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    tokens = check_tokens(tokens, logits.shape[-1]).to(logits.device)
    if tokens.shape != logits.shape[:2] or tokens.shape[1] < 2:
        raise ValueError(f"tokens {tuple(tokens.shape)} must be the [batch, pos] the logits {tuple(logits.shape)} were "
                         "computed from, with at least 2 positions (the first token is never predicted)")
    log_probs = logits[:, :-1].log_softmax(-1)  # [batch, pos - 1, d_vocab]
    loss = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]
    return loss if per_token else loss.mean()


class Metric:
    """A metric bound to its answers and its read position: logits [batch, pos, d_vocab] -> [batch].

    `at_pos` maps the logits at that position, [batch, d_vocab], to [batch]; patching code uses it
    with `pos` so that only the position read is unembedded. token_ids: every vocabulary entry at_pos
    reads, when it reads no others (a logit difference): then only those columns are unembedded."""

    def __init__(self, name: str, at_pos: Callable[[Tensor], Tensor], pos: int | Tensor = -1,
                 token_ids: Tensor | None = None):
        check_integers(pos, "pos", "an int or a LongTensor [batch]")
        self.name, self.at_pos, self.pos, self.token_ids = name, at_pos, pos, token_ids

    def __call__(self, logits: Tensor) -> Tensor:
        return self.at_pos(logits_at(logits, self.pos))

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, pos={self.pos!r})"


def logit_diff_metric(answer: int | Tensor, wrong: int | Tensor, pos: int | Tensor = -1) -> Metric:
    """Returns a Metric: logits [batch, pos, d_vocab] -> [batch] logit differences at `pos`."""
    check_integers(answer, "answer", "an int token id or a LongTensor [batch]")  # not 2.5 truncated to 2
    check_integers(wrong, "wrong", "an int token id or a LongTensor [batch]")
    ids = torch.cat([torch.as_tensor(answer).reshape(-1), torch.as_tensor(wrong).reshape(-1)]).long().unique()
    return Metric("logit_diff", lambda x: _logit_diff_at(x, answer, wrong), pos, token_ids=ids)


def log_prob_metric(answer: int | Tensor, pos: int | Tensor = -1) -> Metric:
    """Returns a Metric: logits -> [batch] log p(answer) at `pos`."""
    return Metric("log_prob", lambda x: _log_prob_at(x, answer), pos)


def prob_metric(answer: int | Tensor, pos: int | Tensor = -1) -> Metric:
    """Returns a Metric: logits -> [batch] p(answer) at `pos`."""
    return Metric("prob", lambda x: _log_prob_at(x, answer).exp(), pos)


def kl_to(clean_logits: Tensor, pos: int | Tensor = -1) -> Metric:
    """Returns a Metric: logits -> [batch] KL(P_clean || P) at `pos`, in nats (0 on the clean run).

    Conmy et al. 2023 (ACDC); Zhang & Nanda 2023 report KL(P_c||P_*) - KL(P_c||P_patched)."""
    clean_logp = logits_at(clean_logits, pos).log_softmax(-1).detach()  # [batch, d_vocab]

    def at_pos(x: Tensor) -> Tensor:
        if x.shape != clean_logp.shape:
            raise ValueError(f"kl_to: logits at the read position are {tuple(x.shape)} but the clean logits "
                             f"were {tuple(clean_logp.shape)}; the batch and vocabulary must match")
        return (clean_logp.exp() * (clean_logp - x.log_softmax(-1))).sum(-1)

    return Metric("kl_to_clean", at_pos, pos)


def metric_name(metric: Callable) -> str:
    return getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__


def normalized(patched: Tensor | float, clean: Tensor | float, corrupted: Tensor | float) -> Tensor:
    """Returns (patched - corrupted) / (clean - corrupted), on batch means: 1 = clean, 0 = corrupted.

    Each tensor argument with a batch axis has it LAST (per-prompt values [..., batch]) and is averaged
    over it first (ratio of means; Wang et al. 2022, TL's normalize_patched_logit_diff). Scalars and
    0-d tensors are taken as already averaged. When clean == corrupted the score is undefined: NaN,
    with a warning."""
    def mean(x, what):
        if isinstance(x, (str, bytes, bool)) or x is None:
            check_real(x, what, "a tensor of per-prompt values [..., batch] or a number")
        x = torch.as_tensor(x, dtype=torch.float32) if not isinstance(x, Tensor) else x.float()
        return x.mean(-1) if x.dim() else x
    p, c, c_star = mean(patched, "patched"), mean(clean, "clean"), mean(corrupted, "corrupted")
    if c.dim() or c_star.dim():
        raise ValueError(f"clean and corrupted must be per-prompt values [batch] or scalars; got shapes "
                         f"{tuple(torch.as_tensor(clean).shape)} and {tuple(torch.as_tensor(corrupted).shape)}")
    denom = c - c_star
    if float(denom.abs()) <= 1e-12 * max(1.0, float(c.abs())):
        warnings.warn(f"clean and corrupted metrics are equal ({float(c):.6g}); the normalised score is "
                      "undefined (NaN). Use the raw metric values.", RuntimeWarning, stacklevel=2)
        return torch.full_like(p, float("nan"))
    return (p - c_star) / denom
