"""The tuned lens: one affine translator per layer, trained so each layer's readout matches the model's output.

    TunedLens_l(h) = LN_f(h + (A_l h + b_l)) W_U          A_l = 0, b_l = 0 at initialisation

The translator is added residually (tuned-lens 0.2.0's `TunedLens.transform_hidden`), so weight decay pulls
it towards the identity, i.e. towards the logit lens. `train_tuned_lens` minimises the summed forward KL
KL(p_final || p_l) over layers with the published recipe (SGD, Nesterov momentum 0.9, lr 1.0 scaled by
1 - momentum, weight decay 1e-3, linear decay to zero, gradients clipped to norm 1). `TunedLens.save` and
`TunedLens.load` read and write tuned-lens's folder format (config.json + params.pt), so lenses move
between the two libraries.

Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens"
(arXiv:2303.08112); docs/methods.md §4.2 and §13.1.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from minitx.checks import check_count, check_tokens
from minitx.hooks import get_act_name
from minitx.lens import Lens, check_lens_model, load_tensor_file, unembed_hash
from minitx.model import Run, Transformer

CONFIG_KEYS = ("base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
               "unembed_hash", "lens_type")
MISSPELLED_HASH = "unemebd_hash"  # the key published GPT-2 lenses carry


class TunedLens(Lens):
    """T_layer(h) = h + h A_layerᵀ + b_layer for layer < n_layer (one nn.Linear each, tuned-lens's [out, in]
    layout); the identity at the final residual. A new lens is all zeros: exactly the logit lens."""

    kind = "tuned"

    def __init__(self, model: Transformer, bias: bool = True, base_model_name_or_path: str = "minitx",
                 base_model_revision: str | None = None):
        super().__init__(model)
        weight = model.W_U
        d = model.cfg.d_model
        self.translators = nn.ModuleList(nn.Linear(d, d, bias=bias, device=weight.device, dtype=weight.dtype)
                                         for _ in range(model.cfg.n_layer))
        with torch.no_grad():
            for translator in self.translators:
                translator.weight.zero_()
                if bias:
                    translator.bias.zero_()
        self.bias = bias
        self.history: list[tuple[int, int, list[float]]] = []  # set by train_tuned_lens
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision

    def transform(self, h: Tensor, layer: int) -> Tensor:  # [..., d_model] -> same
        self.check_layer(layer)
        if layer == self.model.cfg.n_layer:
            return h
        return h + self.translators[layer](h)

    def parameters(self):
        return self.translators.parameters()

    def config(self) -> dict:
        """tuned-lens's TunedLensConfig, as written to config.json."""
        return dict(base_model_name_or_path=self.base_model_name_or_path, d_model=self.model.cfg.d_model,
                    num_hidden_layers=self.model.cfg.n_layer, bias=self.bias,
                    base_model_revision=self.base_model_revision, unembed_hash=unembed_hash(self.model),
                    lens_type="linear_tuned_lens")

    def save(self, path) -> Path:
        """Writes the folder tuned-lens's `TunedLens.from_model_and_pretrained` reads: config.json and
        params.pt (the translators' state dict: "0.weight" [d_model, d_model], "0.bias", "1.weight", ...)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().clone() for name, tensor in self.translators.state_dict().items()}
        torch.save(state, path / "params.pt")
        (path / "config.json").write_text(json.dumps(self.config(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, model: Transformer, path) -> "TunedLens":
        """Reads a tuned-lens folder (config.json + params.pt, loaded with weights_only=True) for `model`.
        Wrong d_model or layer count, a bad file or an unsafe pickle raise; another model's unembedding warns."""
        path = Path(path)
        if path.is_file() and path.name in ("config.json", "params.pt"):  # a file of the folder: read the folder
            path = path.parent
        config = _read_config(path / "config.json", model)
        lens = cls(model, bias=bool(config.get("bias", True)),
                   base_model_name_or_path=str(config.get("base_model_name_or_path") or "minitx"),
                   base_model_revision=config.get("base_model_revision"))
        state = load_tensor_file(path / "params.pt", "tuned lens parameters")
        _check_state(state, lens.translators.state_dict(), path / "params.pt")
        lens.translators.load_state_dict({k: v.to(model.W_U.dtype) for k, v in state.items()})
        check_lens_model(config.get("unembed_hash") or config.get(MISSPELLED_HASH), model, f"tuned lens {path}")
        return lens


def _read_config(path: Path, model: Transformer) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"tuned lens: no config.json at {path} (a tuned-lens folder holds config.json "
                                "and params.pt)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"tuned lens config {path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"tuned lens config {path} must be a JSON object, got {type(config).__name__}")
    unknown = set(config) - set(CONFIG_KEYS) - {MISSPELLED_HASH}
    if unknown:
        warnings.warn(f"tuned lens config {path}: ignoring unknown keys {sorted(unknown)}", stacklevel=3)
    if config.get("lens_type", "linear_tuned_lens") != "linear_tuned_lens":
        raise ValueError(f"tuned lens config {path}: lens_type={config['lens_type']!r}; only "
                         "'linear_tuned_lens' is supported")
    cfg = model.cfg
    if config.get("d_model") != cfg.d_model:
        raise ValueError(f"tuned lens {path} was made for d_model={config.get('d_model')!r}, but this model has "
                         f"d_model={cfg.d_model}: it belongs to a different model")
    if config.get("num_hidden_layers") != cfg.n_layer:
        raise ValueError(f"tuned lens {path} has {config.get('num_hidden_layers')!r} layers (num_hidden_layers), "
                         f"but this model has n_layer={cfg.n_layer}: it belongs to a different model")
    return config


def _check_state(state: dict, expected: dict, path: Path) -> None:
    """The saved translators must have exactly the lens's keys and shapes."""
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"tuned lens parameters {path} do not fit this model: missing {missing[:4]}, "
                         f"unexpected {extra[:4]} (expected '0.weight', '0.bias', ... one per layer)")
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor) or tensor.shape != expected[name].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(f"tuned lens parameters {path}: {name} has shape {shape}, this model needs "
                             f"{tuple(expected[name].shape)}")
        if not tensor.is_floating_point() or not bool(tensor.isfinite().all()):
            raise ValueError(f"tuned lens parameters {path}: {name} must hold finite floats")


def _vocabulary_outcomes(model: Transformer) -> tuple[Tensor | None, float | None]:
    """(ids of the W_U columns that are not all zero, log of how many are), or (None, None) when none is zero.

    A zero column gives logit 0 under every lens, so all of them can be merged into ONE outcome with logit
    log(count): softmax mass and KL are unchanged, since both distributions are uniform inside the group.
    A model trained on a small vocabulary (weights/english-6l uses 242 of 50,257 rows) trains 200x faster."""
    zero = model.W_U.detach().eq(0).all(0)  # [d_vocab]
    n_zero = int(zero.sum())
    if n_zero == 0:
        return None, None
    return (~zero).nonzero()[:, 0], math.log(n_zero)


def _outcome_log_probs(x: Tensor, model: Transformer, used: Tensor | None, log_zero: float | None) -> Tensor:
    """x [..., d_model] (a stream already in the final basis) -> log-probabilities over the outcomes
    [..., d_vocab], or over the used ids plus the merged zero columns [..., len(used) + 1]."""
    if used is None:
        return model.unembed(x, Run()).float().log_softmax(-1)
    logits = model.unembed(x, Run(), token_ids=used).float()
    return torch.cat([logits, logits.new_full((*logits.shape[:-1], 1), log_zero)], -1).log_softmax(-1)


def lens_kl(lens: Lens, h: Tensor, layer: int, final_log_probs: Tensor, used=None, log_zero=None) -> Tensor:
    """Mean KL(p_final || p_lens) in nats over every position of h [batch, pos, d_model] (tuned-lens's loss)."""
    log_probs = _outcome_log_probs(lens.transform(h, layer), lens.model, used, log_zero)
    return (final_log_probs.exp() * (final_log_probs - log_probs)).sum(-1).mean()


def _optimizer(kind: str, params: list, steps: int, lr_scale: float, momentum: float, weight_decay: float):
    """tuned-lens 0.2.0's `Optimizer.create_optim` and `create_scheduler` (scripts/ingredients.py): linear
    decay to zero, no warm-up (its Adam warm-up is never switched on: it compares an enum to "adam")."""
    if kind == "sgd":  # PyTorch's momentum scales the step by 1 / (1 - momentum); tuned-lens undoes that
        optimizer = torch.optim.SGD(params, lr=lr_scale * (1 - momentum), momentum=momentum, nesterov=True,
                                    weight_decay=weight_decay)
    elif kind == "adam":
        optimizer = torch.optim.Adam(params, lr=lr_scale * 1e-3, betas=(momentum, 0.999), amsgrad=True,
                                     weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer={kind!r}; use 'sgd' (the published recipe) or 'adam'")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, (steps - step) / steps))


def train_tuned_lens(model: Transformer, token_batches, *, steps: int | None = None, lens: TunedLens | None = None,
                     optimizer: str = "sgd", lr_scale: float = 1.0, momentum: float = 0.9, weight_decay: float = 1e-3,
                     max_grad_norm: float = 1.0, progress: bool = True) -> TunedLens:
    """Returns a TunedLens trained on `token_batches` (an iterable of LongTensor [batch, pos], one optimiser
    step each, streamed: only one batch is in memory). tuned-lens 0.2.0's recipe by default: SGD with
    Nesterov momentum, lr scaled by (1 - momentum), linear decay to 0 over `steps`, gradient norm clipped
    to 1; the loss is KL(p_final || p_layer) at every position, summed over layers (docs/methods.md §13.1).

    steps: defaults to len(token_batches); give it for an iterator. lens: continue training this lens.
    optimizer "adam": tuned-lens's alternative (AMSGrad, betas (momentum, 0.999), lr 1e-3 x lr_scale).
    Deterministic: zero initialisation and no sampling, so the same batches give the same lens (on the same
    device and thread count). Runs where the model is (CPU or CUDA); batches are moved there. progress
    prints ten lines to stderr. `lens.history` records (step, tokens seen, mean KL per layer).
    """
    if steps is None:
        if not hasattr(token_batches, "__len__"):
            raise ValueError("token_batches has no length; give steps= (the linear decay needs the total)")
        steps = len(token_batches)
    check_count(steps, "steps", "the number of optimiser steps")
    lens = lens or TunedLens(model)
    params = list(lens.parameters())
    optimizer, schedule = _optimizer(optimizer, params, steps, lr_scale, momentum, weight_decay)
    names = [get_act_name("resid_pre", l) for l in range(model.cfg.n_layer)]
    used, log_zero = _vocabulary_outcomes(model)
    device, seen, start, history = model.W_U.device, 0, time.perf_counter(), []
    for step, tokens in enumerate(token_batches):
        if step == steps:
            break
        tokens = check_tokens(tokens, model.cfg.d_vocab).to(device)
        with torch.no_grad():
            # stop_at_layer=n_layer: the final residual, before ln_final
            resid, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=model.cfg.n_layer)
            final = _outcome_log_probs(resid, model, used, log_zero)  # [batch, pos, outcomes]
        losses = []
        for layer, name in enumerate(names):  # one layer at a time keeps one [batch, pos, d_vocab] graph alive
            with torch.enable_grad():
                loss = lens_kl(lens, cache[name], layer, final, used, log_zero)
                # autograd.grad, not backward: a model with trainable weights gets no .grad from the lens
                own = list(lens.translators[layer].parameters())
                for param, grad in zip(own, torch.autograd.grad(loss, own)):
                    param.grad = grad if param.grad is None else param.grad + grad
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        schedule.step()
        seen += tokens.numel()
        history.append((step + 1, seen, losses))
        if progress and ((step + 1) % max(1, steps // 10) == 0 or step + 1 == steps):
            print(f"tuned lens: step {step + 1}/{steps}, {seen:,} tokens, KL per layer "
                  f"{' '.join(f'{x:.3f}' for x in losses)} nats, "
                  f"{seen / (time.perf_counter() - start):,.0f} tokens/s", file=sys.stderr)
    lens.history = history
    return lens
