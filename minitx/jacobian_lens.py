"""The Jacobian lens: one averaged Jacobian per layer carries that layer's stream to the last block's output.

    JacobianLens_l(h) = LN_f(J_l h) W_U        J_l [d_model, d_model]; J_l = I is the logit lens

J_l is the mean, over prompts and over valid source positions t (the first `skip_first_positions` and the
last position excluded), of sum_{t' valid, t' >= t} d h_final[t'] / d h_l[t]: resid_post of block l to
resid_post of the last block (before LN_f). `fit_jacobian_lens` computes it exactly as the reference does:
one forward per prompt (replicated `dim_batch` times) and one backward per `dim_batch` output dimensions,
each with one-hot cotangents at every valid position. Files are the reference artifact format (a torch.save
dict: "J" {layer: [d_model, d_model], float16}, "n_prompts", "source_layers", "d_model", "metadata") and
its fit checkpoints ("jacobian_sum", "n_done", ...), which TransformerLens 4.3's `JacobianLens` also reads.

Layers: the reference keys J by block output l; a minitx lens reads resid_pre[layer], so J_l is read at
layer l + 1 (resid_pre[l + 1] is resid_post[l]) and the embedding (resid_pre[0]) has no Jacobian lens.

Gurnee et al. 2026, "Verbalizable Representations Form a Global Workspace in Language Models"
(Transformer Circuits Thread); docs/methods.md §13.2.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from minitx.checks import check_count, check_tokens, is_int
from minitx.lens import Lens, check_lens_model, load_tensor_file, unembed_hash
from minitx.model import Transformer

SKIP_FIRST_POSITIONS = 16  # the reference's default: early positions (attention sinks) are atypical


class JacobianLens(Lens):
    """T_layer(h) = J_{layer-1} h (h @ Jᵀ) for each fitted block output; the identity at the final residual.

    jacobians: {block l: [d_model, d_model]} in the reference's convention (J maps column vectors)."""

    kind = "jacobian"

    def __init__(self, model: Transformer, jacobians: dict, n_prompts: int, metadata: dict | None = None):
        super().__init__(model)
        cfg, device = model.cfg, model.W_U.device
        if not jacobians:
            raise ValueError("a Jacobian lens needs at least one layer's matrix")
        for layer, matrix in jacobians.items():
            if not is_int(layer) or not 0 <= layer < cfg.n_layer - 1:
                raise ValueError(f"Jacobian lens has layer {layer!r}, but this model (n_layer={cfg.n_layer}) has "
                                 f"block outputs 0..{cfg.n_layer - 2} to transport (the last one is the target): "
                                 "it belongs to a model with more layers")
            if not isinstance(matrix, Tensor) or matrix.shape != (cfg.d_model, cfg.d_model):
                shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
                raise ValueError(f"Jacobian lens layer {layer} has shape {shape}, but this model has d_model="
                                 f"{cfg.d_model}: it needs [{cfg.d_model}, {cfg.d_model}]")
            if not matrix.is_floating_point() or not bool(matrix.isfinite().all()):
                raise ValueError(f"Jacobian lens layer {layer} must hold finite floats")
        self.jacobians = {l: jacobians[l].detach().to(device, model.W_U.dtype) for l in sorted(jacobians)}
        self.n_prompts = int(n_prompts)
        self.metadata = dict(metadata or {})

    @property
    def layers(self) -> list[int]:
        return [l + 1 for l in self.jacobians]

    @property
    def source_layers(self) -> list[int]:
        """The block outputs fitted, the reference's keys."""
        return list(self.jacobians)

    def transform(self, h: Tensor, layer: int) -> Tensor:  # [..., d_model] -> same
        self.check_layer(layer)
        if layer == self.model.cfg.n_layer:
            return h
        return h @ self.jacobians[layer - 1].T

    def vectors(self, layer: int) -> Tensor:
        """[d_vocab, d_model] the J-lens vectors read at `layer`: row v of W_Uᵀ J, token v's direction there."""
        self.check_layer(layer)
        J = self.jacobians[layer - 1] if layer < self.model.cfg.n_layer else torch.eye(self.model.cfg.d_model)
        return self.model.W_U.T @ J.to(self.model.W_U)

    def save(self, path, dtype: torch.dtype = torch.float16) -> Path:
        """Writes the reference artifact (float16 by default, as the reference: entries are order one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"J": {l: J.detach().cpu().to(dtype) for l, J in self.jacobians.items()},
                   "n_prompts": self.n_prompts, "source_layers": self.source_layers,
                   "d_model": self.model.cfg.d_model}
        if self.metadata:
            payload["metadata"] = self.metadata
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, model: Transformer, path) -> "JacobianLens":
        """Reads an artifact ("J") or a fit checkpoint ("jacobian_sum" / "n_done") for `model`, with
        weights_only=True. Wrong d_model or layers, a bad file or an unsafe pickle raise; another model warns."""
        payload = load_tensor_file(path, "Jacobian lens")
        if "J" in payload:
            jacobians, n_prompts, metadata = payload["J"], payload.get("n_prompts", 0), payload.get("metadata")
        elif "jacobian_sum" in payload:
            n_prompts = payload.get("n_done", 0)
            if not is_int(n_prompts) or n_prompts < 1:
                raise ValueError(f"Jacobian lens checkpoint {path} has n_done={n_prompts!r}; it needs >= 1 prompt")
            jacobians = {l: J.float() / n_prompts for l, J in payload["jacobian_sum"].items()}
            metadata = {k: payload[k] for k in ("target_layer", "skip_first") if k in payload}
        else:
            raise ValueError(f"{path} is not a Jacobian lens: it has neither 'J' (an artifact) nor 'jacobian_sum' "
                             f"(a fit checkpoint); keys: {sorted(map(str, payload))[:6]}")
        if not isinstance(jacobians, dict):
            raise ValueError(f"Jacobian lens {path}: 'J' must be a dict {{layer: matrix}}")
        if "d_model" in payload and payload["d_model"] != model.cfg.d_model:
            raise ValueError(f"Jacobian lens {path} was fitted for d_model={payload['d_model']!r}, but this model "
                             f"has d_model={model.cfg.d_model}: it belongs to a different model")
        metadata = metadata if isinstance(metadata, dict) else {}
        target = metadata.get("target_layer", model.cfg.n_layer - 1)
        if target != model.cfg.n_layer - 1:
            raise ValueError(f"Jacobian lens {path} targets block {target!r}, but this model's last block is "
                             f"{model.cfg.n_layer - 1}: it belongs to a model with another layer count")
        lens = cls(model, {int(l): J for l, J in jacobians.items()}, n_prompts, metadata)
        check_lens_model(metadata.get("unembed_hash"), model, f"Jacobian lens {path}")
        return lens


def prompt_jacobians(model: Transformer, tokens: Tensor, source_layers: list[int], dim_batch: int,
                     skip_first_positions: int) -> dict[int, Tensor]:
    """{block l: [d_model, d_model]} for ONE prompt tokens [1, pos]: row i is the mean over valid source
    positions t of sum_{t' >= t valid} d h_final[t', i] / d h_l[t, :] (docs/methods.md §13.2)."""
    d, n_layer, T = model.cfg.d_model, model.cfg.n_layer, tokens.shape[1]
    valid = torch.arange(skip_first_positions, T - 1, device=tokens.device)
    root = source_layers[0]
    with torch.no_grad():
        h = model(tokens, stop_at_layer=root + 1)  # resid_post[root] [1, pos, d_model]
    sources = [h.expand(dim_batch, -1, -1).clone().requires_grad_(True)]  # one copy per cotangent
    with torch.enable_grad():
        # Each source is the previous one run through the blocks between them, so all stay in one graph.
        for start, stop in zip(source_layers, source_layers[1:] + [n_layer - 1]):
            sources.append(model(sources[-1], start_at_layer=start + 1, stop_at_layer=stop + 1))
    final, sources = sources[-1], sources[:-1]  # resid_post of the last block, [dim_batch, pos, d_model]
    jacobians = {l: torch.zeros(d, d, device=h.device) for l in source_layers}
    rows, cotangent = torch.arange(dim_batch, device=h.device), torch.zeros_like(final)
    for first in range(0, d, dim_batch):
        n = min(dim_batch, d - first)
        cotangent.zero_()
        cotangent[rows[:n, None], valid[None, :], first + rows[:n, None]] = 1.0  # dim first+i at every valid t'
        grads = torch.autograd.grad(final, sources, cotangent, retain_graph=first + dim_batch < d)
        for l, grad in zip(source_layers, grads):
            jacobians[l][first:first + n] = grad[:n, valid].float().mean(1)  # mean over source positions t
    return jacobians


def fit_jacobian_lens(model: Transformer, prompts, *, source_layers=None, dim_batch: int = 8,
                      max_seq_len: int = 128, skip_first_positions: int = SKIP_FIRST_POSITIONS,
                      metadata: dict | None = None, checkpoint=None, checkpoint_every: int = 50,
                      progress: bool = True) -> JacobianLens:
    """Returns a JacobianLens fitted on `prompts` (a LongTensor [n, pos] or a list of 1-d id sequences, each
    cut to max_seq_len), one prompt at a time. The reference estimator (TransformerLens 4.3's
    `JacobianLens.fit`): prompts with no valid position (pos <= skip_first_positions + 1) are skipped with a
    warning; every fitted prompt counts equally. Deterministic; runs where the model is (CPU or CUDA).

    source_layers: block outputs to fit (default 0..n_layer-2). checkpoint: a path where the running sums
    are written every `checkpoint_every` prompts (the reference checkpoint format) and resumed from.
    """
    n_layer = model.cfg.n_layer
    layers = list(range(n_layer - 1)) if source_layers is None else source_layers
    if not isinstance(layers, (list, tuple, range)) or not layers or not all(is_int(l) and 0 <= l < n_layer - 1
                                                                              for l in layers):
        raise ValueError(f"source_layers={source_layers!r}: a list of block outputs 0..{n_layer - 2} (the last "
                         "block's output is the target), at least one")
    layers = sorted(set(layers))
    check_count(dim_batch, "dim_batch", "output dimensions per backward pass")
    check_count(max_seq_len, "max_seq_len", "tokens kept of each prompt")
    check_count(checkpoint_every, "checkpoint_every", "prompts between checkpoints")
    check_count(skip_first_positions, "skip_first_positions", "early positions left out as sources", minimum=0)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: fit_jacobian_lens needs at least one prompt of token ids")
    if any(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be token ids (a LongTensor [n, pos] or lists of ids), not text; use "
                        "minitx.Tokenizer.default().to_tokens(text, prepend_bos=True)[0] for each prompt")
    sums, n_done, start = _resume(checkpoint, layers, model.cfg.d_model)
    device, began = model.W_U.device, time.perf_counter()
    for index in range(start, len(prompts)):
        tokens = check_tokens(torch.as_tensor(prompts[index]), model.cfg.d_vocab)[:1, :max_seq_len].to(device)
        if tokens.shape[1] <= skip_first_positions + 1:
            warnings.warn(f"prompt {index} has {tokens.shape[1]} tokens; it needs more than "
                          f"{skip_first_positions + 1} to have a valid position, so it is skipped", stacklevel=2)
        else:
            for l, J in prompt_jacobians(model, tokens, layers, dim_batch, skip_first_positions).items():
                sums[l] += J.cpu()
            n_done += 1
        if checkpoint is not None and ((index + 1) % checkpoint_every == 0 or index + 1 == len(prompts)):
            torch.save({"jacobian_sum": sums, "n_done": n_done, "next_idx": index + 1, "source_layers": layers,
                        "target_layer": n_layer - 1, "skip_first": skip_first_positions}, checkpoint)
        if progress and ((index + 1) % max(1, len(prompts) // 10) == 0 or index + 1 == len(prompts)):
            print(f"Jacobian lens: prompt {index + 1}/{len(prompts)}, {time.perf_counter() - began:.1f} s",
                  file=sys.stderr)
    if n_done == 0:
        raise ValueError(f"no prompt had more than {skip_first_positions + 1} tokens, so nothing was fitted; "
                         "give longer prompts or a smaller skip_first_positions")
    metadata = {"estimator": "jacobian_lens", "fitted_by": "minitx", "skip_first_positions": skip_first_positions,
                "dim_batch": dim_batch, "max_seq_len": max_seq_len, "target_layer": n_layer - 1,
                "unembed_hash": unembed_hash(model), **(metadata or {})}
    return JacobianLens(model, {l: S / n_done for l, S in sums.items()}, n_done, metadata)


def _resume(checkpoint, layers: list[int], d_model: int):
    """(running sums, prompts done, next prompt index): zeros, or what a fit checkpoint holds."""
    if checkpoint is None or not Path(checkpoint).exists():
        return {l: torch.zeros(d_model, d_model) for l in layers}, 0, 0
    saved = load_tensor_file(checkpoint, "Jacobian lens checkpoint")
    if "jacobian_sum" not in saved or sorted(saved["jacobian_sum"]) != layers:
        raise ValueError(f"checkpoint {checkpoint} is not a fit of source layers {layers}; remove it to start over")
    return {l: J.float() for l, J in saved["jacobian_sum"].items()}, int(saved["n_done"]), int(saved["next_idx"])
