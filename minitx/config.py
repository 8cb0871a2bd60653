"""The shape and arithmetic of a GPT-2 model (`Config`), its check, and reading it from HF's config.json.

Field names are those of Hugging Face's GPT-2 config.json, so a config file maps onto `Config` one
key at a time; the analysis names (d_model, d_head, d_mlp, d_vocab, n_ctx) are properties.
Every checkpoint tensor's name and shape follows from a Config alone (minitx/checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

from minitx.activations import ACTIVATIONS
from minitx.checks import is_int

GPT2_EOT = 50256  # <|endoftext|>: GPT-2's BOS, end of text and padding
PROCESSING_STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")  # minitx.processing


@dataclass(frozen=True)
class Config:
    """The shape and arithmetic of a GPT-2 model; field names are those of HF's config.json."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024
    vocab_size: int = 50257
    n_inner: int | None = None  # None means 4 * n_embd, as in HF
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    # An id in the vocabulary; GPT-2's 50256 is also accepted for a smaller vocabulary, where it means
    # "not set" and analysis that needs a BOS uses the last id instead.
    bos_token_id: int = GPT2_EOT
    # Weight processing applied to these weights, in order (minitx/processing.py); () for a raw checkpoint.
    processing: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.processing, list):  # as config.json stores it
            object.__setattr__(self, "processing", tuple(self.processing))
        check_config(self)

    # The analysis names for the same numbers.
    d_model = property(lambda self: self.n_embd)
    d_head = property(lambda self: self.n_embd // self.n_head)
    d_mlp = property(lambda self: self.n_inner or 4 * self.n_embd)
    d_vocab = property(lambda self: self.vocab_size)
    n_ctx = property(lambda self: self.n_positions)
    n_layers = property(lambda self: self.n_layer)  # TransformerLens's names
    n_heads = property(lambda self: self.n_head)
    act_fn = property(lambda self: self.activation_function)


def check_config(cfg: Config) -> None:
    """ValueError naming the field unless every field has its type and a value that makes a model."""
    def refuse(field, allowed):
        raise ValueError(f"config {field}={getattr(cfg, field)!r} is not allowed: {allowed}")

    for field in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        if not is_int(getattr(cfg, field)) or getattr(cfg, field) < 1:
            refuse(field, "it must be a positive integer")
    if cfg.n_inner is not None and (not is_int(cfg.n_inner) or cfg.n_inner < 1):
        refuse("n_inner", "a positive integer or null")
    if cfg.n_embd % cfg.n_head:
        raise ValueError(f"config n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}; "
                         "each head needs an equal share of the model width")
    if not isinstance(cfg.activation_function, str) or cfg.activation_function not in ACTIVATIONS:
        raise ValueError(f"config activation_function={cfg.activation_function!r} is not supported; "
                         f"allowed: {', '.join(sorted(ACTIVATIONS))}")
    eps = cfg.layer_norm_epsilon
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not (0 < eps < math.inf):
        refuse("layer_norm_epsilon", "a finite number > 0, such as 1e-5")
    for field in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                  "tie_word_embeddings"):
        if not isinstance(getattr(cfg, field), bool):  # the string "false" would read as True
            refuse(field, "true or false (a JSON boolean, not a string or number)")
    bos = cfg.bos_token_id
    if not is_int(bos) or bos < 0 or (bos >= cfg.vocab_size and bos != GPT2_EOT):
        refuse("bos_token_id", f"an id in the vocabulary 0..{cfg.vocab_size - 1} (or GPT-2's {GPT2_EOT})")
    steps = cfg.processing
    if not isinstance(steps, tuple) or any(s not in PROCESSING_STEPS for s in steps) or len(set(steps)) < len(steps):
        refuse("processing", f"a list of distinct names from {', '.join(PROCESSING_STEPS)} ([] for raw weights)")


FIELDS = tuple(f.name for f in dataclasses.fields(Config))


def config_from_dict(hf, source: str) -> Config:
    """A parsed HF config.json -> Config (HF's other keys are ignored); ValueError naming `source`."""
    if not isinstance(hf, dict):
        raise ValueError(f"{source}: a config must be a JSON object, got {type(hf).__name__}")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{source}: model_type={hf['model_type']!r}; minitx loads GPT-2 checkpoints only")
    try:
        return Config(**{k: v for k, v in hf.items() if k in FIELDS})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from e


def read_config(path: Path) -> Config:
    """config.json -> Config; ValueError naming the file (unreadable, not JSON, or a bad field)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except PermissionError as e:
        raise PermissionError(f"{path}: cannot read the model config: permission denied") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the model config ({e})") from e
    try:
        hf = json.loads(text, parse_constant=lambda c: float(c))  # Infinity/NaN parse, then fail the check
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: cannot read the model config: not valid JSON ({e})") from e
    return config_from_dict(hf, str(path))
