"""Residual-stream decomposition and direct logit attribution (DLA).

The final residual at a position is an exact sum of what each component wrote into it:

    x_L = W_E[t] + W_pos[i] + sum_{l,h} o^{l,h} + sum_l b_O^l + sum_l mlp_out_l     (b_out inside mlp_out)

`decompose_resid` returns those pieces. `direct_logit_attribution` pushes each through the final layer
norm with the scale sigma FROZEN at the value cached on this run (centring is linear, so it is applied
per component) and dots it with the unembedding direction:

    DLA_c(t) = (gamma_f * (c - mean(c)) / sigma) . W_U[:, t],   plus the bias term beta_f . W_U[:, t]

so that sum_c DLA_c + bias term = the logit (or the logit difference) exactly. DLA measures only the
direct path: a head whose effect goes through later heads can have DLA near 0 and still matter.

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; Wang et al. 2022
(IOI) for per-head DLA of a logit difference; METHODS §6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from minitx.metrics import check_integers
from minitx.model import Transformer


class Decomposition(NamedTuple):
    components: Tensor  # [component, batch, d_model]
    labels: list[str]  # "embed", "pos_embed", "L.H" per head, "L.b_O" (or "b_O" summed), "L.mlp"
    resid: Tensor  # [batch, d_model] the final residual (blocks.{L-1}.hook_resid_post) it sums to


@dataclass
class DLAResult:
    """Direct logit attributions at one position per prompt, final-LN scale frozen."""

    contributions: Tensor  # [component, batch] DLA of each residual component
    labels: list[str]  # one per component, as in Decomposition
    heads: Tensor  # [layer, head, batch] the head rows of `contributions`
    bias_term: Tensor  # [batch] beta_f . direction (GPT-2 has no unembedding bias)
    target: Tensor  # [batch] the model's own logit (or logit difference) at that position
    scale: Tensor  # [batch] the frozen ln_final scale sigma

    @property
    def total(self) -> Tensor:
        """Returns [batch] sum of contributions plus the bias term; equals `target` up to float rounding."""
        return self.contributions.sum(0) + self.bias_term


def _positions(pos, batch: int, seq_len: int) -> Tensor:
    """Returns [batch] non-negative positions from an int or a LongTensor [batch] (negative counts from the end)."""
    check_integers(pos, "pos", f"an int or a LongTensor [batch={batch}] of positions")
    p = torch.as_tensor(pos, dtype=torch.long)
    if p.dim() == 0:
        p = p.expand(batch)
    if p.shape != (batch,):
        raise ValueError(f"pos must be an int or a LongTensor [batch={batch}], got shape {tuple(p.shape)}")
    bad = p[(p < -seq_len) | (p >= seq_len)]
    if len(bad):
        raise ValueError(f"position {int(bad[0])} is out of range; allowed -{seq_len}..{seq_len - 1}")
    return p % seq_len


def _token_ids(ids, batch: int, d_vocab: int, name: str) -> Tensor:
    check_integers(ids, name, f"an int token id or a LongTensor [batch={batch}] of ids")
    t = torch.as_tensor(ids, dtype=torch.long)
    t = t.expand(batch) if t.dim() == 0 else t
    if t.shape != (batch,):
        raise ValueError(f"{name} must be an int or a LongTensor [batch={batch}], got shape {tuple(t.shape)}")
    if int(t.min()) < 0 or int(t.max()) >= d_vocab:
        raise ValueError(f"{name} holds an id outside the vocabulary 0..{d_vocab - 1}")
    return t


def _record(model: Transformer, tokens: Tensor, pos) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Returns ({point name: [batch, ...]}, [batch, d_vocab] logits, [batch] positions) at each prompt's position,
    from one forward whose hooks keep only that position of each point needed (memory stays O(batch))."""
    tokens = model._check_tokens(tokens)
    B, S = tokens.shape
    p, rows = _positions(pos, B, S), torch.arange(B)
    L = model.cfg.n_layer
    names = ["hook_embed", "hook_pos_embed", f"blocks.{L - 1}.hook_resid_post", "ln_final.hook_scale"]
    names += [f"blocks.{l}.{point}" for l in range(L) for point in ("attn.hook_result", "hook_mlp_out")]
    kept: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:  # x: [batch, pos, ...]; read only, nothing replaced
        kept[hook.name] = x[rows, p].detach()

    logits = model.run_with_hooks(tokens, fwd_hooks=[(names, keep)])  # [batch, pos, d_vocab]
    return kept, logits[rows, p], p


def _assemble(model: Transformer, kept: dict[str, Tensor], bias: str) -> tuple[Tensor, list[str]]:
    """Returns ([component, batch, d_model] residual pieces, their labels) from the recorded points."""
    if bias not in ("per_layer", "summed"):
        raise ValueError(f"bias={bias!r}; allowed: 'per_layer' (one b_O component per layer) or 'summed'")
    embed = kept["hook_embed"]  # [batch, d_model]
    parts, labels = [embed, kept["hook_pos_embed"]], ["embed", "pos_embed"]
    b_O = model.b_O  # [layer, d_model]; it belongs to no head
    for l in range(model.cfg.n_layer):
        result = kept[f"blocks.{l}.attn.hook_result"]  # [batch, head, d_model]
        parts += list(result.unbind(1))
        labels += [f"{l}.{h}" for h in range(result.shape[1])]
        if bias == "per_layer":
            parts.append(b_O[l].expand_as(embed))
            labels.append(f"{l}.b_O")
        parts.append(kept[f"blocks.{l}.hook_mlp_out"])
        labels.append(f"{l}.mlp")
    if bias == "summed":
        parts.append(b_O.sum(0).expand_as(embed))
        labels.append("b_O")
    return torch.stack(parts), labels  # [component, batch, d_model]


def decompose_resid(model: Transformer, tokens: Tensor, pos=-1, bias: str = "per_layer") -> Decomposition:
    """Returns [component, batch, d_model] the pieces of the final residual at pos, with labels; they sum to it.
    Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits" (METHODS §6.1).

    Components: embed, pos_embed, then per layer each head's write o^{l,h} (hook_result), the attention
    output bias b_O ("L.b_O", or one "b_O" summed over layers with bias="summed") and the MLP output
    (its b_out included). pos: an int or a LongTensor [batch].
    """
    kept, _, _ = _record(model, tokens, pos)
    components, labels = _assemble(model, kept, bias)
    return Decomposition(components, labels, kept[f"blocks.{model.cfg.n_layer - 1}.hook_resid_post"])


def direct_logit_attribution(model: Transformer, tokens: Tensor, answer, wrong=None, pos=-1,
                             bias: str = "per_layer") -> DLAResult:
    """Returns DLAResult, contributions [component, batch] to logit[answer] (- logit[wrong]), final-LN scale frozen.
    Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits" (METHODS §6.2).

    Each component c is centred and divided by the ln_final scale cached on this run, times gamma_f,
    dotted with W_U[:, answer] (minus W_U[:, wrong] for a logit difference); `bias_term` is
    beta_f . that direction. contributions.sum(0) + bias_term equals the model's logit (difference).
    answer, wrong: an int or a LongTensor [batch]; pos: an int or a LongTensor [batch].
    """
    tokens = model._check_tokens(tokens)
    B, V = tokens.shape[0], model.cfg.d_vocab
    answer = _token_ids(answer, B, V, "answer")  # checked before the forward runs
    wrong = None if wrong is None else _token_ids(wrong, B, V, "wrong")
    kept, logits, _ = _record(model, tokens, pos)
    components, labels = _assemble(model, kept, bias)  # [component, batch, d_model]
    W_U = model.W_U  # [d_model, d_vocab]
    direction = W_U[:, answer].T  # [batch, d_model]
    target = logits[torch.arange(B), answer]
    if wrong is not None:
        direction = direction - W_U[:, wrong].T
        target = target - logits[torch.arange(B), wrong]
    scale = kept["ln_final.hook_scale"][:, 0]  # [batch]
    ln = model.ln_final
    centred = components - components.mean(-1, keepdim=True)  # [component, batch, d_model]
    contributions = torch.einsum("cbd,bd->cb", centred * ln.w / scale[:, None], direction)
    bias_term = direction @ ln.b  # [batch]
    L, H = model.cfg.n_layer, model.cfg.n_head
    head_rows = [labels.index(f"{l}.{h}") for l in range(L) for h in range(H)]
    heads = contributions[head_rows].view(L, H, B)
    return DLAResult(contributions, labels, heads, bias_term, target, scale)
