"""Hook plumbing shared by every forward: point-name shorthands, name resolution with typo
suggestions, validation of what a hook returns, one call's hooks (`Run`) and the Cache it fills.

The names are TransformerLens's (`blocks.3.attn.hook_pattern`); the mechanism is not: a hook is a
plain function passed to one call, never a module or global state.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

SHORTHANDS = {"embed": "hook_embed", "pos_embed": "hook_pos_embed", "resid_pre": "hook_resid_pre",
              "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
              "mlp_out": "hook_mlp_out", "mlp_in": "hook_mlp_in", "q_input": "hook_q_input",
              "k_input": "hook_k_input", "v_input": "hook_v_input", "q": "attn.hook_q", "k": "attn.hook_k",
              "v": "attn.hook_v", "z": "attn.hook_z", "result": "attn.hook_result",
              "attn_scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern",
              "pre": "mlp.hook_pre", "post": "mlp.hook_post", "scale": "hook_scale",
              "normalized": "hook_normalized"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """("pattern", 3) -> "blocks.3.attn.hook_pattern"; ("scale", 2, "ln2"); ("scale",) -> ln_final."""
    if name not in SHORTHANDS:
        close = difflib.get_close_matches(str(name), list(SHORTHANDS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise KeyError(f"unknown shorthand {name!r}; {hint}allowed: {', '.join(SHORTHANDS)}")
    suffix = SHORTHANDS[name]
    if name in ("embed", "pos_embed"):
        return suffix
    if name in ("scale", "normalized"):
        if layer is None:
            return f"ln_final.{suffix}"
        return f"blocks.{layer}.{layer_type or 'ln1'}.{suffix}"
    if layer is None:
        raise ValueError(f"shorthand {name!r} needs a layer, e.g. get_act_name({name!r}, 0)")
    return f"blocks.{layer}.{suffix}"



@dataclass(frozen=True)
class HookPoint:
    """What a hook function receives as its second argument: which point is firing."""

    name: str

    @property
    def layer(self) -> int | None:
        return int(self.name.split(".")[1]) if self.name.startswith("blocks.") else None


NamesFilter = str | Iterable[str] | Callable[[str], bool] | None


def resolve_names(spec: NamesFilter, all_names: list[str]) -> list[str]:
    """A name, a list of names, or a predicate -> the matching point names; typos fail here."""
    if callable(spec):
        return [n for n in all_names if spec(n)]
    if not isinstance(spec, (str, list, tuple, set, frozenset)):
        raise TypeError(f"names_filter (and a hook's name) must be a point name, a list of names, a predicate "
                        f"fn(name) -> bool or None; got {type(spec).__name__}")
    names = [spec] if isinstance(spec, str) else list(spec)
    valid = set(all_names)
    for name in names:
        if name not in valid:
            raise KeyError(f"unknown activation point {name!r}{suggest(name, all_names)}")
    return names


def suggest(name, all_names) -> str:
    close = difflib.get_close_matches(str(name), list(all_names), n=3, cutoff=0.6)
    return (f"; did you mean {', '.join(close)}?" if close
            else "; see minitx.model.POINTS for the names, or minitx.get_act_name('resid_pre', 0)")


def resolve_hooks(hooks, all_names):
    table: dict[str, list] = {}
    for pair in hooks:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"hooks must be a list of (name, fn) pairs, e.g. [('blocks.0.hook_resid_pre', fn)]; "
                            f"got an item {type(pair).__name__} {pair!r:.60}")
        spec, fn = pair
        if not callable(fn):
            raise TypeError(f"hook for {spec!r} must be callable as fn(activation, hook), got {type(fn).__name__}")
        for name in resolve_names(spec, all_names):
            table.setdefault(name, []).append(fn)
    return table


def check_replacement(name: str, x: Tensor, out) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"hook on {name} returned {type(out).__name__}; return a tensor of shape "
                        f"{tuple(x.shape)}, or None to leave the activation unchanged")
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"hook on {name} returned shape {tuple(out.shape)}, {out.dtype} on {out.device}; "
                         f"it must match the activation: {tuple(x.shape)}, {x.dtype} on {x.device}")
    # -inf is legitimate where the activation already had it (masked attention scores); new NaN or inf is not.
    if (out.isnan() | (torch.isinf(out) & torch.isfinite(x))).any():
        raise FloatingPointError(f"hook on {name} returned NaN or inf values where the activation was finite")
    if name.endswith("hook_scale") and (out <= 0).any():
        raise ValueError(f"hook on {name} returned a scale <= 0; a layer-norm scale must be positive")


class Run:
    """The hooks and cache requests of one forward call. Every activation passes through
    `run(name, tensor)`, which consults only what this call asked for; nothing is stored on the model,
    so nothing outlives the call. all_names: the model's point names; default_names: those a cache
    holds when names_filter is None (the points computed anyway). Run() is a call with no hooks."""

    def __init__(self, all_names: tuple = (), default_names: tuple = (), fwd_hooks=(), bwd_hooks=(),
                 cache_filter: NamesFilter = False, cache: dict | None = None, keep_grad: bool = False):
        self.fwd = resolve_hooks(fwd_hooks, all_names)
        self.bwd = resolve_hooks(bwd_hooks, all_names)
        if cache_filter is None:  # None means every point that is computed anyway
            self.cache_names = set(default_names)
        else:
            self.cache_names = set(resolve_names(cache_filter, all_names)) if cache_filter is not False else set()
        self.cache = cache
        self.keep_grad = keep_grad
        self.wanted = self.cache_names | set(self.fwd) | set(self.bwd)
        self.replaced: set[str] = set()  # points whose hooks returned a replacement in this call

    def wants(self, name: str) -> bool:
        return name in self.wanted

    def __call__(self, name: str, x: Tensor) -> Tensor:
        if name not in self.wanted:
            return x
        for fn in self.fwd.get(name, ()):
            x = self.apply(fn, name, x)
        for fn in self.bwd.get(name, ()):
            if not x.requires_grad:
                raise RuntimeError(f"backward hook on {name}: no gradient flows through this point; "
                                   "run with torch.enable_grad() and an input or weight that requires grad")
            x.register_hook(functools.partial(_backward_hook, fn, name))
        if name in self.cache_names:
            self.cache[name] = x if self.keep_grad else x.detach()
        return x

    def apply(self, fn, name: str, x: Tensor) -> Tensor:
        """One forward hook. It gets its own copy of the activation, so an in-place edit (returning None)
        means exactly what returning the edited tensor means, and never reaches another point, the
        residual stream or a cached value. The copy costs one activation, only where a hook is."""
        own = x.clone()
        version = own._version  # bumped by every in-place write
        out = fn(own, HookPoint(name))
        edited = out is not None or own._version != version or (name.endswith("hook_scale") and not torch.equal(own, x))
        out = own if out is None else out
        if edited:
            check_replacement(name, x, out)
            self.replaced.add(name)
        return out


def _backward_hook(fn, name: str, grad: Tensor):
    out = fn(grad, HookPoint(name))
    if out is not None and (not isinstance(out, Tensor) or out.shape != grad.shape or out.dtype != grad.dtype):
        got = f"shape {tuple(out.shape)}, {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"backward hook on {name} returned {got}; it must return None or a gradient like the one "
                         f"it got: shape {tuple(grad.shape)}, {grad.dtype}")
    return out


class Cache(dict):
    """Activations by point name; also indexable by shorthand: cache["pattern", 3]."""

    def __getitem__(self, key):
        name = get_act_name(*key) if isinstance(key, tuple) else key
        layers = {int(n.split(".")[1]) for n in self if n.startswith("blocks.")}
        if name not in self and name.startswith("blocks.") and layers and int(name.split(".")[1]) > max(layers):
            raise KeyError(f"{name!r}: layer {name.split('.')[1]} is beyond this cache's layers 0..{max(layers)}")
        if name not in self:
            raise KeyError(f"{name!r} is not in this cache{suggest(name, self) if self else ''} "
                           f"(names_filter decides which points a run caches)")
        return super().__getitem__(name)
