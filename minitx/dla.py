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
(IOI) for per-head DLA of a logit difference; docs/methods.md §6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from minitx.checks import check_choice, check_positions, check_token_ids, check_tokens
from minitx.hooks import get_act_name
from minitx.model import Transformer
from minitx.results import Result


BIAS = ("per_layer", "summed")  # b_O: one component per layer, or one summed over layers


@dataclass(kw_only=True, repr=False)
class Decomposition(Result):
    """The pieces of the final residual at one position per prompt; they sum to it.

    scores [component, prompt, d_model]: each component's write (axes names them); labels: "embed",
    "pos_embed", "L.H" per head, "L.b_O" (or "b_O" summed), "L.mlp"; resid [prompt, d_model]: the final
    residual (resid_post of the last layer) the pieces sum to."""

    axes: tuple = ("component", "prompt", "d_model")
    labels: list[str]
    resid: Tensor


@dataclass(kw_only=True, repr=False)
class DLAResult(Result):
    """Direct logit attributions at one position per prompt, final-LN scale frozen.

    scores [component]: the mean over prompts; per_prompt [component, prompt]; clean: the model's own
    logit (difference) on this run, batch mean. Extras: labels (one per component, as in Decomposition),
    heads [layer, head, prompt] (the head rows of per_prompt), bias_term [prompt] beta_f . direction
    (GPT-2 has no unembedding bias), target [prompt] the model's own logit (difference), scale [prompt]
    the frozen ln_final scale sigma."""

    axes: tuple = ("component",)
    labels: list[str]
    heads: Tensor
    bias_term: Tensor
    target: Tensor
    scale: Tensor

    @property
    def total(self) -> Tensor:
        """Returns [prompt] sum of contributions plus the bias term; equals `target` up to float rounding."""
        return self.per_prompt.sum(0) + self.bias_term


def _record(model: Transformer, tokens: Tensor, pos) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Returns ({point name: [batch, ...]}, [batch, d_vocab] logits, [batch] positions) at each prompt's position,
    from one forward whose hooks keep only that position of each point needed (memory stays O(batch))."""
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    B, S = tokens.shape
    p, rows = check_positions(pos, S, batch=B), torch.arange(B)
    L = model.cfg.n_layer
    names = [get_act_name("embed"), get_act_name("pos_embed"), get_act_name("resid_post", L - 1), get_act_name("scale")]
    names += [get_act_name(point, l) for l in range(L) for point in ("result", "mlp_out")]
    kept: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:  # x: [batch, pos, ...]; read only, nothing replaced
        kept[hook.name] = x[rows, p].detach()

    logits = model.run_with_hooks(tokens, fwd_hooks=[(names, keep)])  # [batch, pos, d_vocab]
    return kept, logits[rows, p], p


def _assemble(model: Transformer, kept: dict[str, Tensor], bias: str) -> tuple[Tensor, list[str]]:
    """Returns ([component, batch, d_model] residual pieces, their labels) from the recorded points."""
    embed = kept[get_act_name("embed")]  # [batch, d_model]
    parts, labels = [embed, kept[get_act_name("pos_embed")]], ["embed", "pos_embed"]
    b_O = model.b_O  # [layer, d_model]; it belongs to no head
    for l in range(model.cfg.n_layer):
        result = kept[get_act_name("result", l)]  # [batch, head, d_model]
        parts += list(result.unbind(1))
        labels += [f"{l}.{h}" for h in range(result.shape[1])]
        if bias == "per_layer":
            parts.append(b_O[l].expand_as(embed))
            labels.append(f"{l}.b_O")
        parts.append(kept[get_act_name("mlp_out", l)])
        labels.append(f"{l}.mlp")
    if bias == "summed":
        parts.append(b_O.sum(0).expand_as(embed))
        labels.append("b_O")
    return torch.stack(parts), labels  # [component, batch, d_model]


def decompose_resid(model: Transformer, tokens: Tensor, pos=-1, bias: str = "per_layer") -> Decomposition:
    """Returns [component, batch, d_model] the pieces of the final residual at pos, with labels; they sum to it.
    Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits" (docs/methods.md §6.1).

    Components: embed, pos_embed, then per layer each head's write o^{l,h} (hook_result), the attention
    output bias b_O ("L.b_O", or one "b_O" summed over layers with bias="summed") and the MLP output
    (its b_out included). pos: an int or a LongTensor [batch].
    """
    check_choice(bias, "bias", BIAS)  # before the forward
    kept, _, _ = _record(model, tokens, pos)
    components, labels = _assemble(model, kept, bias)
    resid = kept[get_act_name("resid_post", model.cfg.n_layer - 1)]
    return Decomposition(scores=components, labels=labels, resid=resid)


def direct_logit_attribution(model: Transformer, tokens: Tensor, answer, wrong=None, pos=-1,
                             bias: str = "per_layer") -> DLAResult:
    """Returns DLAResult: contributions [component, prompt] (per_prompt) to logit[answer] (- logit[wrong]),
    final-LN scale frozen.
    Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits" (docs/methods.md §6.2).

    Each component c is centred and divided by the ln_final scale cached on this run, times gamma_f,
    dotted with W_U[:, answer] (minus W_U[:, wrong] for a logit difference); `bias_term` is
    beta_f . that direction. per_prompt.sum(0) + bias_term equals the model's logit (difference).
    answer, wrong: an int or a LongTensor [batch]; pos: an int or a LongTensor [batch].
    """
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    B, V = tokens.shape[0], model.cfg.d_vocab
    answer = check_token_ids(answer, V, "answer", batch=B)  # checked before the forward runs
    wrong = None if wrong is None else check_token_ids(wrong, V, "wrong", batch=B)
    check_choice(bias, "bias", BIAS)
    kept, logits, _ = _record(model, tokens, pos)
    components, labels = _assemble(model, kept, bias)  # [component, batch, d_model]
    W_U = model.W_U  # [d_model, d_vocab]
    direction = W_U[:, answer].T  # [batch, d_model]
    target = logits[torch.arange(B), answer]
    if wrong is not None:
        direction = direction - W_U[:, wrong].T
        target = target - logits[torch.arange(B), wrong]
    scale = kept[get_act_name("scale")][:, 0]  # [batch]
    ln = model.ln_final
    centred = components - components.mean(-1, keepdim=True)  # [component, batch, d_model]
    contributions = torch.einsum("cbd,bd->cb", centred * ln.w / scale[:, None], direction)
    bias_term = direction @ ln.b  # [batch]
    L, H = model.cfg.n_layer, model.cfg.n_head
    head_rows = [labels.index(f"{l}.{h}") for l in range(L) for h in range(H)]
    heads = contributions[head_rows].view(L, H, B)
    metric = "logit" if wrong is None else "logit_diff"
    return DLAResult(scores=contributions.mean(1), per_prompt=contributions, clean=float(target.detach().mean()),
                     metric=metric, labels=labels, heads=heads, bias_term=bias_term, target=target, scale=scale)
