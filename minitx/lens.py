"""Lenses: read every layer's residual stream through the final layer norm and the unembedding.

`Lens` is the one interface, lens(h, layer) -> logits = LN_f(T_layer(h)) W_U with the model's own LN_f and
W_U; `LogitLens` (T = identity) lives here, `minitx.tuned_lens.TunedLens` (T(h) = h + A h + b) and
`minitx.jacobian_lens.JacobianLens` (T(h) = J h) beside it. `read_lens` reads a prompt batch with any of
them and `summarize_lens` gives the metrics (KL to final, entropy, top-k, target probability and rank).

`logit_lens` applies LN_f with the statistics of the state being read (its own mean and variance) and
the learned gain and bias, then W_U, so the entry for the final residual is the model's logits.
`cached_scale_lens` is the older TransformerLens variant that divides every state by the FINAL
state's cached scale; it is kept under a different name for comparison and is not the logit lens.
`summarize_lens` turns any stack of per-layer logits into the tuned-lens metrics (nats, 0-based ranks).

References: nostalgebraist 2020, "interpreting GPT: the logit lens" (LessWrong); Belrose et al. 2023,
"Eliciting Latent Predictions from Transformers with the Tuned Lens" (arXiv:2303.08112), for the
metrics; docs/methods.md §4.1, §4.3 and §13.
"""

from __future__ import annotations

import hashlib
import numbers
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from minitx.checks import check_integers, check_positions, check_tokens
from minitx.hooks import get_act_name
from minitx.model import Run, Transformer
from minitx.results import Result

TARGETS = "token ids (an int, a list of ints or an integer tensor broadcastable to [batch, pos]) or 'next'"


@dataclass(kw_only=True, repr=False)
class LensResult(Result):
    """Per-layer readouts; the first axis follows `labels` ("0_pre", ["0_mid",] ..., "final").

    scores is kl_to_final (axes layer, batch, pos); `lens` names the lens that read the streams."""

    labels: list[str]
    positions: Tensor  # [pos] the positions read, as non-negative indices
    logits: Tensor  # [layer+1, batch, pos, d_vocab]
    top_tokens: Tensor  # [layer+1, batch, pos, top_k] ids, most probable first
    top_probs: Tensor  # [layer+1, batch, pos, top_k]
    kl_to_final: Tensor  # [layer+1, batch, pos] KL(p_final || p_layer) in nats; 0 at "final"
    entropy: Tensor  # [layer+1, batch, pos] H(p_layer) in nats
    target_probs: Tensor | None = None  # [layer+1, batch, pos] p_layer(target)
    target_ranks: Tensor | None = None  # [layer+1, batch, pos] ids with a strictly larger logit (0 = top-1)
    lens: str = "logit"

    def log_probs(self) -> Tensor:
        """Returns [layer+1, batch, pos, d_vocab] log-probabilities (computed on request, to save memory)."""
        return self.logits.log_softmax(-1)

    def mean_kl(self) -> Tensor:
        """Returns [layer+1]: KL(p_final || p_layer) in nats, averaged over prompts and positions."""
        return self.kl_to_final.mean((1, 2))

    def top1_agreement(self) -> Tensor:
        """Returns [layer+1]: the share of (prompt, position) cells whose top-1 token is the model's own."""
        return (self.top_tokens[..., 0] == self.top_tokens[-1:, ..., 0]).float().mean((1, 2))

    def check_batch(self, batch) -> int:
        """batch as an index into the prompts this result read, or a clear ValueError."""
        n = self.logits.shape[1]
        check_integers(batch, "batch", f"an int, the index of one of the {n} prompts read")
        if not -n <= batch < n:
            raise ValueError(f"batch={batch} is out of range: this lens result read {n} prompt(s), "
                             f"allowed {-n}..{n - 1}")
        return batch % n


def lens_labels(n_layer: int, incl_mid: bool = False) -> list[str]:
    """Returns [layer+1 (or 2*layer+1)] labels "0_pre", ["0_mid",] ..., "final", TransformerLens's order.
    nostalgebraist 2020, "interpreting GPT: the logit lens"."""
    per_layer = [[f"{l}_pre", f"{l}_mid"] if incl_mid else [f"{l}_pre"] for l in range(n_layer)]
    return [label for pair in per_layer for label in pair] + ["final"]


class Lens:
    """lens(h, layer) -> logits: LN_f(T_layer(h)) W_U through the model's OWN final layer norm and unembedding.

    `layer` is always the index of the stream read: resid_pre[layer] (the input to block `layer`, HF
    hidden_states[layer]) for 0 <= layer < n_layer, and layer = n_layer for the final residual, where
    every lens is the identity and so reproduces the model's logits. Subclasses set `kind`, the
    `layers` they can read and `transform` (T_layer, [..., d_model] -> [..., d_model]).
    The lens keeps a reference to its model (never a copy) and runs on the model's device.
    """

    kind = "logit"

    def __init__(self, model: Transformer):
        self.model = model

    @property
    def layers(self) -> list[int]:
        """The resid_pre indices this lens reads, final excluded (the logit lens: all of them)."""
        return list(range(self.model.cfg.n_layer))

    def transform(self, h: Tensor, layer: int) -> Tensor:
        """T_layer(h) [..., d_model]: the identity for the logit lens."""
        self.check_layer(layer)
        return h

    def __call__(self, h: Tensor, layer: int) -> Tensor:
        """[..., d_model] -> [..., d_vocab] logits."""
        return self.model.unembed(self.transform(h, layer), Run())  # Run(): the lens runs no one's hooks

    def check_layer(self, layer) -> None:
        check_integers(layer, "layer", "an int, the index of the resid_pre read (n_layer for the final residual)")
        if layer != self.model.cfg.n_layer and layer not in self.layers:
            raise ValueError(f"the {self.kind} lens cannot read layer {layer}; it reads resid_pre of layers "
                             f"{_ranges(self.layers)} and the final residual (layer {self.model.cfg.n_layer})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers {_ranges(self.layers)} + final, d_model={self.model.cfg.d_model})"


class LogitLens(Lens):
    """The logit lens: T_layer = identity (nostalgebraist 2020)."""


def _ranges(layers: list[int]) -> str:
    return f"{layers[0]}..{layers[-1]}" if layers and layers == list(range(layers[0], layers[-1] + 1)) else str(layers)


def _point_names(n_layer: int, incl_mid: bool, layers=None) -> list[str]:
    names = []
    for l in range(n_layer) if layers is None else layers:
        names += [get_act_name("resid_pre", l)] + ([get_act_name("resid_mid", l)] if incl_mid else [])
    return names + [get_act_name("resid_post", n_layer - 1)]


def _positions(positions, seq_len: int) -> Tensor:
    if positions is None:
        return torch.arange(seq_len)
    if isinstance(positions, (list, tuple, range)) and not len(positions):
        raise ValueError(f"positions is empty; give None (all) or at least one of -{seq_len}..{seq_len - 1}")
    return check_positions(positions, seq_len, "positions").reshape(-1)


def _residuals(model: Transformer, tokens: Tensor, incl_mid: bool, positions, scale: bool = False, layers=None):
    """Returns ([layer+1, batch, pos, d_model] residual states at the chosen positions (resid_pre of `layers`,
    default all, then the final residual), [pos] positions, [batch, pos, 1] the final residual's cached
    ln_final scale, or None unless asked)."""
    names = _point_names(model.cfg.n_layer, incl_mid, layers)
    pos = _positions(positions, tokens.shape[1])  # checked before the forward runs
    # Asking for the scale makes ln_final take its explicit path; the lens alone leaves the forward as is.
    _, cache = model.run_with_cache(tokens, names_filter=names + (["ln_final.hook_scale"] if scale else []))
    stack = torch.stack([cache[name][:, pos] for name in names])
    return stack, pos, cache["ln_final.hook_scale"][:, pos] if scale else None


def summarize_lens(logits: Tensor, targets: Tensor | None = None, top_k: int = 5, labels=None,
                   positions: Tensor | None = None, lens: str = "logit") -> LensResult:
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
    result = LensResult(scores=kl, axes=("layer", "batch", "pos"), metric="KL(p_final || p_layer), nats", lens=lens,
                        labels=list(labels) if labels is not None else [str(i) for i in range(len(logits))],
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


def read_lens(lens: Lens, tokens: Tensor, targets: Tensor | str | None = None, top_k: int = 5,
              incl_mid: bool = False, positions=None) -> LensResult:
    """Returns LensResult, logits [layer+1, batch, pos, d_vocab]: lens(h, layer) at every resid_pre the lens
    reads and at the final residual, with the tuned-lens metrics (docs/methods.md §4.1, §13).

    lens: a `Lens` (LogitLens, TunedLens, JacobianLens) made for the model it reads. The "final" entry is
    the model's logits for every lens (bit for bit with positions=None; to float rounding when fewer rows
    go through the matmul). incl_mid adds each resid_mid (logit lens only: the others have no translator there).
    positions: None (all), an int or a list of ints (negative counts from the end); restricting
    them bounds memory, which grows as layers x batch x pos x d_vocab.
    targets: ids broadcastable to [batch, pos] (positions as selected), or "next" for tokens[:, p + 1].
    """
    if not isinstance(lens, Lens):
        raise TypeError(f"lens must be a minitx Lens (LogitLens, TunedLens, JacobianLens), got {type(lens).__name__}")
    model = lens.model
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    if isinstance(targets, str):
        if targets != "next":
            raise ValueError(f"targets={targets!r}; use token ids or 'next'")
    elif targets is not None:
        check_integers(targets, "targets", TARGETS)
    _check_top_k(top_k)
    if incl_mid and lens.kind != "logit":
        raise ValueError(f"incl_mid=True reads resid_mid, which only the logit lens can; the {lens.kind} lens "
                         "has translators for resid_pre only")
    layers = lens.layers
    stack, pos, _ = _residuals(model, tokens, incl_mid, positions, layers=layers)
    read = [layer for layer in layers for _ in range(1 + incl_mid)] + [model.cfg.n_layer]
    with torch.no_grad():
        logits = torch.stack([lens(resid, layer) for resid, layer in zip(stack, read)])  # [layer+1, batch, pos, vocab]
    if isinstance(targets, str):
        targets = _next_tokens(tokens, pos)
    labels = lens_labels(model.cfg.n_layer, incl_mid)
    labels = labels if layers == list(range(model.cfg.n_layer)) else [f"{l}_pre" for l in layers] + ["final"]
    return summarize_lens(logits, targets, top_k, labels, pos, lens=lens.kind)


def logit_lens(model: Transformer, tokens: Tensor, targets: Tensor | str | None = None, top_k: int = 5,
               incl_mid: bool = False, positions=None) -> LensResult:
    """Returns LensResult, logits [layer+1, batch, pos, d_vocab]: LN_f(h) W_U at every resid_pre and the final resid.
    nostalgebraist 2020, "interpreting GPT: the logit lens" (docs/methods.md §4.1). `read_lens(LogitLens(model), ...)`.

    LN_f uses each state's OWN mean and variance with the learned gain and bias (the model's `unembed`),
    so the "final" entry equals the model's logits. Arguments as `read_lens`.
    """
    return read_lens(LogitLens(model), tokens, targets, top_k, incl_mid, positions)


def lens_scores(lenses: dict, token_batches) -> dict[str, dict]:
    """{name: {"labels", "kl", "top1", "n_positions"}}: per readable layer, KL(p_final || p_layer) in nats and
    the share of positions whose top-1 token is the model's own, averaged over every prompt and position of
    `token_batches` (an iterable of [batch, pos] ids, read one batch at a time to bound memory).
    lenses: {name: Lens}, all for the same model."""
    if len({id(lens.model) for lens in lenses.values()}) > 1:
        raise ValueError("lens_scores compares lenses of ONE model; these lenses were made for different models")
    sums: dict[str, list] = {name: [None, None, 0] for name in lenses}
    labels: dict[str, list] = {}
    for tokens in token_batches:
        for name, lens in lenses.items():
            result = read_lens(lens, tokens, top_k=1)
            n = result.kl_to_final[0].numel()
            kl, top1 = result.mean_kl() * n, result.top1_agreement() * n
            total = sums[name]
            total[0] = kl if total[0] is None else total[0] + kl
            total[1] = top1 if total[1] is None else total[1] + top1
            total[2] += n
            labels[name] = result.labels
    if not labels:
        raise ValueError("token_batches is empty: lens_scores needs at least one batch of prompts")
    return {name: {"labels": labels[name], "kl": (kl / n).tolist(), "top1": (top1 / n).tolist(), "n_positions": n}
            for name, (kl, top1, n) in sums.items()}


def unembed_hash(model: Transformer) -> str:
    """The tuned-lens 0.2.0 fingerprint of the unembedding (`tensor_hash` of lm_head.weight [d_vocab, d_model]):
    sha256 of numpy's one-decimal summary print. A lens stores it to recognise the model it was made for."""
    weight = model.W_U.detach().T.cpu().float().numpy()  # [d_vocab, d_model], HF lm_head's layout
    return hashlib.sha256(str.encode(np.array_str(weight, precision=1))).hexdigest()


def check_lens_model(lens_hash: str | None, model: Transformer, what: str) -> None:
    """Warns when a lens file names a different unembedding than the model's (a lens for another model)."""
    if lens_hash and lens_hash != unembed_hash(model):
        warnings.warn(f"{what} was made for a model with a different unembedding (hash {lens_hash[:12]}..., "
                      f"this model {unembed_hash(model)[:12]}...); its readouts may be meaningless here", stacklevel=3)


def load_tensor_file(path, what: str) -> dict:
    """torch.load(weights_only=True) -> the dict saved, with one-line errors for a missing, corrupt or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:
            raise ValueError(f"{what} {path} is refused: loading it would need code execution ({unsafe.group(1)}); "
                             "weights_only=True allows plain tensors, numbers, strings, lists and dicts only") from None
        raise ValueError(f"{what} {path} is not a readable torch.save file") from None
    except (RuntimeError, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{what} {path} is not a readable torch.save file: {reason}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{what} {path} holds a {type(payload).__name__}, not the dict of tensors expected")
    return payload


def cached_scale_lens(model: Transformer, tokens: Tensor, incl_mid: bool = False, positions=None) -> Tensor:
    """Returns [layer+1, batch, pos, d_vocab] logits of the cached-scale variant: NOT the logit lens.
    TransformerLens before PR #1180, `accumulated_resid(apply_ln=True)` (docs/methods.md §4.3; TL issue #1076).

    Each state is centred on its own mean but divided by the FINAL residual's cached LN scale
    (ln_final.hook_scale), then gain, bias and W_U are applied (what TL's folded W_U did). Early layers
    then look nearly uniform. Use it to reproduce old TL notebooks; use `logit_lens` otherwise.
    Labels: `lens_labels(n_layer, incl_mid)`.
    """
    tokens = check_tokens(tokens, model.cfg.d_vocab)
    stack, _, scale = _residuals(model, tokens, incl_mid, positions, scale=True)  # scale: [batch, pos, 1]
    ln = model.ln_final
    normalized = (stack - stack.mean(-1, keepdim=True)) / scale * ln.w + ln.b  # [layer+1, batch, pos, d_model]
    return normalized @ model.W_U
