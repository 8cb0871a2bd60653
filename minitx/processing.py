"""Weight processing as explicit transforms: each returns a NEW model computing the same thing, and the
original is untouched. The new model's config records what was applied (`cfg.processing`, also
written by save_pretrained), so a processed model is never mistaken for the raw checkpoint.

    fold_ln(model)                  each LN's gain and bias moved into the weights that read it
    center_writing_weights(model)   every write into the residual stream made mean-zero over d_model
    center_unembed(model)           W_U minus its mean over the vocabulary
    fold_value_biases(model)        b_V moved into b_O (attention rows sum to 1)
    process(model)                  all four, in that order: TransformerLens's default processing

| transform              | what stays exactly the same (docs/methods.md §11)                                  |
|------------------------|--------------------------------------------------------------------------------------|
| fold_ln                | logits, patterns, q/k/v, every hook after the readers                                |
| center_writing_weights | logits, patterns; the residual stream becomes mean-zero at every position            |
| center_unembed         | log-probs, argmax, logit differences (logits move by one constant per position)      |
| fold_value_biases      | attn_out, logits (each head's z and result change: b_V now lives in b_O)             |

Two choices of minitx's, because GPT-2 ties W_U to W_E and has no unembedding bias:
  * A transform that changes W_U or W_E alone unties them first (tie_word_embeddings becomes false):
    folding ln_final's gain changes W_U, and centring W_E must not move W_U.
  * fold_ln cannot move ln_final's bias β into an unembedding bias (TransformerLens's b_U = β W_U), so
    ln_final keeps β / γ as its bias, with gain 1: γ x̂ W_U + β W_U = x̂ (γ W_U) + (β / γ)(γ W_U).
    Every other folded layer norm has gain 1 and bias 0.

Reference: TransformerLens `weight_processing.py` (fold_layer_norm, center_writing_weights,
center_unembed, fold_value_biases); Elhage et al. 2021 (why folded weights read more directly).
"""

from __future__ import annotations

import dataclasses

import torch

from minitx.config import PROCESSING_STEPS as TRANSFORMS
from minitx.model import Transformer


def _copy(model: Transformer, step: str, untie: bool = False) -> Transformer:
    """A new model with model's weights (W_U untied if asked) and `step` appended to cfg.processing."""
    cfg = model.cfg
    if step in cfg.processing:
        raise ValueError(f"{step} was already applied to this model (processing={cfg.processing}); "
                         "applying it twice is not a weight-processing step minitx offers")
    untie = untie and cfg.tie_word_embeddings
    state = {name: value.clone() for name, value in model.state_dict().items()}
    if untie:
        state["W_U_untied"] = model.W_U.detach().clone()
    new_cfg = dataclasses.replace(cfg, processing=cfg.processing + (step,),
                                  tie_word_embeddings=cfg.tie_word_embeddings and not untie)
    new = Transformer(new_cfg).to(device=model.W_E.device, dtype=model.W_E.dtype)
    new.load_state_dict(state)
    return new.train(model.training).requires_grad_(any(p.requires_grad for p in model.parameters()))


@torch.no_grad()
def fold_ln(model: Transformer) -> Transformer:
    """Each layer norm's gain γ and bias β folded into the weights reading its output: W' = diag(γ) W,
    b' = b + β W; the layer norm keeps only its centring and scaling (gain 1, bias 0; ln_final: see the
    module docstring). As in TransformerLens, W_Q, W_K, W_V and W_in are then centred over d_model (they
    read a mean-zero vector); W_U is not, since ln_final keeps a bias. Logits and every activation after
    the readers are unchanged."""
    new = _copy(model, "fold_ln", untie=True)
    for block in new.blocks:
        for ln, W, b in ((block.ln1, block.attn.W_QKV, block.attn.b_QKV), (block.ln2, block.mlp.W_in, block.mlp.b_in)):
            b += ln.b @ W
            W *= ln.w[:, None]
            W -= W.mean(0, keepdim=True)  # the LN's output is now mean-zero, so a reader's mean over d_model is unread
            ln.w.fill_(1.0)
            ln.b.zero_()
    gain = new.ln_final.w
    if bool((gain == 0).any()):
        raise ValueError("ln_final has a gain of exactly 0 in some dimension, so its bias cannot stay as bias / gain; "
                         "fold_ln needs an unembedding bias this GPT-2 does not have")
    new.W_U_untied *= gain[:, None]
    new.ln_final.b /= gain
    gain.fill_(1.0)
    return new


@torch.no_grad()
def center_writing_weights(model: Transformer) -> Transformer:
    """W_E, W_pos, W_O, b_O, W_out and b_out minus their mean over d_model. Every reader applies a layer norm,
    which removes the mean anyway, so logits and patterns are unchanged; the residual stream becomes
    mean-zero at every position. W_U is untied first, so it keeps reading the uncentred stream's LN output."""
    new = _copy(model, "center_writing_weights", untie=True)
    writers = [new.W_E, new.W_pos] + [w for block in new.blocks
                                      for w in (block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out)]
    for weight in writers:  # the last axis is d_model for each
        weight -= weight.mean(-1, keepdim=True)
    return new


@torch.no_grad()
def center_unembed(model: Transformer) -> Transformer:
    """W_U minus its mean over the vocabulary: every logit of a position moves by the same amount, so
    log-probs, the argmax and logit differences are unchanged."""
    new = _copy(model, "center_unembed", untie=True)
    new.W_U_untied -= new.W_U_untied.mean(-1, keepdim=True)
    return new


@torch.no_grad()
def fold_value_biases(model: Transformer) -> Transformer:
    """b_O += Σ_h b_V^h W_O^h and b_V = 0. Each attention row sums to 1, so b_V reaches the output as exactly
    b_V W_O at every position: attn_out is unchanged (hook_v, hook_z and hook_result are not)."""
    new = _copy(model, "fold_value_biases")
    for block in new.blocks:
        attn = block.attn
        b_V = attn.heads(attn.b_QKV)[2]  # [head, d_head], a view into b_QKV
        attn.b_O += b_V.reshape(-1) @ attn.W_O  # W_O [head * d_head, d_model]
        b_V.zero_()
    return new


def process(model: Transformer, transforms=TRANSFORMS) -> Transformer:
    """The transforms, applied in the given order (default: all four, as TransformerLens processes weights).
    With none to apply, the model itself is returned."""
    if isinstance(transforms, str) or any(t not in TRANSFORMS for t in transforms):
        raise ValueError(f"transforms must be a list of names from {', '.join(TRANSFORMS)}; got {transforms!r}")
    for name in transforms:
        model = STEPS[name](model)
    return model


STEPS = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights, "center_unembed": center_unembed,
         "fold_value_biases": fold_value_biases}
