"""The vocabulary of activation points and the hook plumbing shared by every forward.

    POINTS, point_names(n_layer)        every point a model has, with its axes, in forward order
    SHORTHANDS, get_act_name(...)       "pattern", 3 -> "blocks.3.attn.hook_pattern" (negative layers from the end)
    Run                                 one call's hooks and cache requests; every activation passes through it
    Cache                               activations by name or (shorthand, layer)
    ELSEWHERE                           TransformerLens names minitx keeps elsewhere (for error messages)
    context_hooks, active_context_hooks the per-thread store behind `with model.hooks(...)`

The names are TransformerLens's (`blocks.3.attn.hook_pattern`); the mechanism is not: a hook is a
plain function passed to one call (or one `with` block of one thread), never a module or global state.
A forward hook gets its own copy of the activation, so editing it in place means what returning the
edit means, and never reaches another point or a cached value.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import numbers
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor

# The table of activation points. Every name a user can cache or patch, with its axes, declared
# once. "{l}" stands for the layer. On-request points cost memory or time, so they are computed
# only when a call asks for them; caching "everything by default" leaves them out.

POINTS: dict[str, tuple[str, ...]] = {
    "hook_embed": ("batch", "pos", "d_model"),
    "hook_pos_embed": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_resid_pre": ("batch", "pos", "d_model"),
    "blocks.{l}.ln1.hook_scale": ("batch", "pos", "1"),
    "blocks.{l}.ln1.hook_normalized": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_q_input": ("batch", "pos", "head", "d_model"),  # on request; then q/k/v read these, each normalised alone
    "blocks.{l}.hook_k_input": ("batch", "pos", "head", "d_model"),  # on request; then q/k/v read these, each normalised alone
    "blocks.{l}.hook_v_input": ("batch", "pos", "head", "d_model"),  # on request; then q/k/v read these, each normalised alone
    "blocks.{l}.attn.hook_q": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_k": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_v": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_attn_scores": ("batch", "head", "q_pos", "k_pos"),
    "blocks.{l}.attn.hook_pattern": ("batch", "head", "q_pos", "k_pos"),
    "blocks.{l}.attn.hook_z": ("batch", "pos", "head", "d_head"),
    "blocks.{l}.attn.hook_result": ("batch", "pos", "head", "d_model"),  # on request
    "blocks.{l}.hook_attn_out": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_resid_mid": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_mlp_in": ("batch", "pos", "d_model"),  # on request
    "blocks.{l}.ln2.hook_scale": ("batch", "pos", "1"),
    "blocks.{l}.ln2.hook_normalized": ("batch", "pos", "d_model"),
    "blocks.{l}.mlp.hook_pre": ("batch", "pos", "d_mlp"),
    "blocks.{l}.mlp.hook_post": ("batch", "pos", "d_mlp"),
    "blocks.{l}.hook_mlp_out": ("batch", "pos", "d_model"),
    "blocks.{l}.hook_resid_post": ("batch", "pos", "d_model"),
    "ln_final.hook_scale": ("batch", "pos", "1"),
    "ln_final.hook_normalized": ("batch", "pos", "d_model"),
}
ON_REQUEST = ("hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_result", "hook_mlp_in")


@functools.lru_cache(maxsize=64)
def point_names(n_layer: int, include_on_request: bool = True) -> tuple[str, ...]:
    """Every point name of a model with n_layer blocks, in the order a forward reaches them."""
    per_layer = [t for t in POINTS if "{l}" in t and (include_on_request or not t.endswith(ON_REQUEST))]
    return ("hook_embed", "hook_pos_embed", *(t.format(l=l) for l in range(n_layer) for t in per_layer),
            "ln_final.hook_scale", "ln_final.hook_normalized")


def _shorthands() -> dict[str, str]:
    """TransformerLens's short names, read off POINTS: "pattern" -> "attn.hook_pattern" (after "blocks.{l}.");
    the layer-norm points ("scale", "normalized") name ln1, ln2 or ln_final by layer and layer_type."""
    table = {}
    for template in POINTS:
        last = template.rsplit(".", 1)[-1]
        in_ln = template.startswith("ln_final.") or ".ln" in template
        table.setdefault(last.removeprefix("hook_"), last if in_ln else template.removeprefix("blocks.{l}."))
    table["attn"] = table["pattern"]  # TransformerLens's alias
    return table


SHORTHANDS = _shorthands()
LAYER_TYPES = ("ln1", "ln2")  # which layer norm "scale" and "normalized" name inside a block
SUBLAYER_TYPES = {"attn": ("attn", "a"), "mlp": ("mlp", "m")}  # TransformerLens's optional layer_type


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None, *,
                 n_layers: int | None = None) -> str:
    """("pattern", 3) -> "blocks.3.attn.hook_pattern"; ("scale", 2, "ln2"); ("scale",) -> ln_final.
    A negative layer counts from the end and needs n_layers: ("resid_post", -1, n_layers=12) -> layer 11."""
    if name not in SHORTHANDS:
        close = difflib.get_close_matches(str(name), list(SHORTHANDS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise KeyError(f"unknown shorthand {name!r}; {hint}allowed: {', '.join(SHORTHANDS)}")
    suffix, is_ln = SHORTHANDS[name], name in ("scale", "normalized")
    # TransformerLens's spelling ("pattern", 0, "attn") names the sublayer the point already lies in.
    allowed = LAYER_TYPES if is_ln else SUBLAYER_TYPES.get(suffix.split(".")[0], ())
    if layer_type is not None and layer_type not in allowed:
        takes = (f"it takes {' or '.join(map(repr, allowed))}" if allowed
                 else "it takes none (attention, MLP and layer-norm points do)")
        raise ValueError(f"layer_type={layer_type!r} is not allowed for {name!r}: {takes} "
                         f"(to pick a head, index the activation: cache[{name!r}, l][:, h])")
    layer_type = layer_type if is_ln else None
    if name in ("embed", "pos_embed"):
        return suffix
    if layer is None:
        if is_ln:
            return f"ln_final.{suffix}"
        raise ValueError(f"shorthand {name!r} needs a layer, e.g. get_act_name({name!r}, 0)")
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise TypeError(f"layer must be an int (negative counts from the end), got {type(layer).__name__} {layer!r}")
    if n_layers is not None and not -n_layers <= layer < n_layers:
        raise IndexError(f"layer {layer} is out of range for a model of {n_layers} layers; allowed: "
                         f"{-n_layers}..{n_layers - 1}")
    if layer < 0:
        if n_layers is None:
            raise ValueError(f"layer {layer} counts from the end, so it needs the model's size: "
                             f"get_act_name({name!r}, {layer}, n_layers=model.cfg.n_layer)")
        layer += n_layers
    return f"blocks.{layer}.{layer_type or 'ln1'}.{suffix}" if is_ln else f"blocks.{layer}.{suffix}"


@dataclass(frozen=True)
class HookPoint:
    """What a hook function receives as its second argument: which point is firing."""

    name: str

    def layer(self) -> int | None:  # a method, as TransformerLens's hook.layer()
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


def hook_list(hooks, what: str = "fwd_hooks") -> list:
    """A call's hooks argument -> a list of (name, fn) pairs; None means none."""
    if hooks is None:
        return []
    if not isinstance(hooks, (list, tuple)):
        raise TypeError(f"{what} must be a list of (name, fn) pairs, e.g. [('blocks.0.hook_resid_pre', fn)], or None; "
                        f"got {type(hooks).__name__}")
    return list(hooks)


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
    # One reduction first: a sum is finite when every value is (and, rarely, overflows: then look closer).
    if not bool(out.sum().isfinite()) and (out.isnan() | (torch.isinf(out) & torch.isfinite(x))).any():
        raise FloatingPointError(f"hook on {name} returned NaN or inf values where the activation was finite")
    if name.endswith("hook_scale") and (out <= 0).any():
        raise ValueError(f"hook on {name} returned a scale <= 0; a layer-norm scale must be positive")


def check_hooks_can_fire(run: "Run", start_at_layer, stop_at_layer, n_layer: int) -> None:
    """ValueError when a call gives hooks and none of their points lies in the part of the model it runs
    (blocks start_at_layer..stop_at_layer-1; the embedding only without start_at_layer; ln_final only
    without stop_at_layer): such hooks would silently never fire."""
    names = set(run.fwd) | set(run.bwd)
    start, stop = start_at_layer or 0, n_layer if stop_at_layer is None else stop_at_layer

    def fires(name: str) -> bool:
        layer = HookPoint(name).layer()
        if layer is not None:
            return start <= layer < stop
        return start_at_layer is None if "embed" in name else stop_at_layer is None

    if names and not any(fires(n) for n in names) and isinstance(start, int) and isinstance(stop, int):
        raise ValueError(f"no hook of this call can fire: {', '.join(sorted(names)[:3])} lie outside what it runs "
                         f"(blocks {start}..{stop - 1}{'' if start_at_layer is None else ', no embedding'}"
                         f"{'' if stop_at_layer is None else ', no ln_final'}); move the hooks or the layer range")


class Run:
    """The hooks and cache requests of one forward call. Every activation passes through
    `run(name, tensor)`, which consults only what this call asked for; nothing is stored on the model,
    so nothing outlives the call. all_names: the model's point names; default_names: those a cache
    holds when names_filter is None (the points computed anyway). Run() is a call with no hooks."""

    def __init__(self, all_names: tuple = (), default_names: tuple = (), fwd_hooks=(), bwd_hooks=(),
                 cache_filter: NamesFilter = False, cache: dict | None = None, keep_grad: bool = False):
        self.fwd = resolve_hooks(hook_list(fwd_hooks), all_names)
        self.bwd = resolve_hooks(hook_list(bwd_hooks, "bwd_hooks"), all_names)
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
        counted = not own.is_inference()  # under torch.inference_mode tensors keep no version counter
        version = own._version if counted else None  # bumped by every in-place write
        out = fn(own, HookPoint(name))
        edited = out is not None or (own._version != version if counted else not torch.equal(own, x)) or (
            name.endswith("hook_scale") and not torch.equal(own, x))
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


# Hooks set with `with model.hooks(...)`: (model, fwd, bwd) entries, per thread and asyncio task.
_CONTEXT_HOOKS: contextvars.ContextVar[tuple] = contextvars.ContextVar("minitx_context_hooks", default=())


@contextlib.contextmanager
def context_hooks(owner, fwd_hooks: list, bwd_hooks: list):
    """Adds owner's hooks for the calling thread (or task) until the block ends; on exit removes exactly
    this entry, whatever order overlapping blocks end in."""
    entry = (owner, fwd_hooks, bwd_hooks)
    _CONTEXT_HOOKS.set(_CONTEXT_HOOKS.get() + (entry,))
    try:
        yield owner
    finally:
        _CONTEXT_HOOKS.set(tuple(e for e in _CONTEXT_HOOKS.get() if e is not entry))


def active_context_hooks(owner) -> tuple[list, list]:
    """(fwd, bwd): the hooks `context_hooks` holds for owner in the calling thread, outermost first."""
    entries = [e for e in _CONTEXT_HOOKS.get() if e[0] is owner]
    return [h for e in entries for h in e[1]], [h for e in entries for h in e[2]]


class Cache(dict):
    """Activations by point name; also by (shorthand, layer[, layer_type]) as get_act_name reads them:
    cache["pattern", 3], cache["resid_post", -1] (from the end), cache["scale", 2, "ln2"]."""

    def __init__(self, *args, n_layers: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_layers = n_layers  # the model's, so negative layers count from its end

    def name(self, key) -> str:
        """A key -> the point name it stands for; TypeError or KeyError saying what a key may be."""
        if isinstance(key, str) and (key not in SHORTHANDS or super().__contains__(key)):
            return key
        if isinstance(key, str):  # a shorthand alone: "embed", "pos_embed"; "scale", "normalized" (ln_final)
            if key in ("embed", "pos_embed", "scale", "normalized"):
                return get_act_name(key)
            raise KeyError(f"{key!r} needs a layer: cache[{key!r}, 0] (or cache[{key!r}, -1] for the last layer)")
        if not isinstance(key, tuple) or not key:
            raise TypeError(f"a cache key is a point name ('blocks.0.hook_resid_pre') or a (shorthand, layer) tuple "
                            f"such as ('resid_pre', 0) or ('pattern', -1); got {type(key).__name__} {key!r:.40}")
        n = self.n_layers
        if n is None and len(key) > 1 and isinstance(key[1], int) and key[1] < 0:  # built by hand: its own layers
            layers = [int(k.split(".")[1]) for k in self if k.startswith("blocks.")]
            n = max(layers) + 1 if layers else None
        try:
            return get_act_name(*key, n_layers=n)
        except IndexError as e:
            raise KeyError(str(e)) from None

    def __getitem__(self, key):
        name = self.name(key)
        layers = {int(n.split(".")[1]) for n in self if n.startswith("blocks.")}
        if name not in self and name.startswith("blocks.") and layers and int(name.split(".")[1]) > max(layers):
            raise KeyError(f"{name!r}: layer {name.split('.')[1]} is beyond this cache's layers 0..{max(layers)}")
        if name not in self:
            raise KeyError(f"{name!r} is not in this cache{suggest(name, self) if self else ''} "
                           f"(names_filter decides which points a run caches)")
        return super().__getitem__(name)

    def __contains__(self, key) -> bool:
        try:
            return super().__contains__(self.name(key))
        except (KeyError, ValueError, TypeError, IndexError):
            return False

    def get(self, key, default=None):
        return self[key] if key in self else default

    def __getattr__(self, name: str):  # only reached for names a Cache lacks
        if name in ELSEWHERE:
            raise AttributeError(f"Cache has no {name} (a TransformerLens name); in minitx: {ELSEWHERE[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


# TransformerLens names a porting user reaches for on a model or cache, and where minitx keeps them
# (for error messages only: minitx computes these with free functions over a model).
ELSEWHERE = {
    "OV": "minitx.circuits.OV(model)", "QK": "minitx.circuits.QK(model)", "tokenizer": "minitx.Tokenizer.default()",
    "b_U": "none: GPT-2 has no unembedding bias (minitx.processing keeps ln_final's bias instead)",
    **{n: f"minitx.{n}(...); the tokenizer is not part of the model"
       for n in ("to_tokens", "to_str_tokens", "to_string", "to_single_token")},
    **{n: "none: hooks are per call, run_with_hooks(tokens, fwd_hooks=[...]) or `with model.hooks(...)`"
       for n in ("add_hook", "reset_hooks", "remove_all_hook_fns")},
    "accumulated_resid": "minitx.lens.logit_lens(model, tokens) reads the stream before each block",
    "decompose_resid": "minitx.dla.decompose_resid(model, tokens, pos)",
    "stack_head_results": "cache['result', l] with names_filter asking for it ([batch, pos, head, d_model])",
    "get_full_resid_decomposition": "minitx.dla.decompose_resid(model, tokens, pos)",
    "logit_attrs": "minitx.dla.direct_logit_attribution(model, tokens, answer, wrong)",
    "apply_ln_to_stack": "model.unembed(x) applies ln_final on x's own statistics, then W_U",
    "remove_batch_dim": "index the batch: cache['pattern', 0][0]",
    "to": "{name: x.to(device) for name, x in cache.items()}",
    "return_type": "the call returns logits; the loss is minitx.metrics.next_token_loss(logits, tokens)",
    "reset_hooks_end": "none: hooks never outlive the call",
}


def missing_attribute(owner: str, name: str, layer_weights, is_model: bool) -> str | None:
    """The message for a name a model part lacks, when minitx keeps it elsewhere; None when it does not."""
    if name in layer_weights and not is_model:
        return f"{owner} has no {name}; the model has it: model.{name}[layer]"
    if name in ELSEWHERE:
        return f"{owner} has no {name} (a TransformerLens name); in minitx: {ELSEWHERE[name]}"
    return None


def check_keywords(kwargs: dict, call: str) -> None:
    """TypeError for a TransformerLens keyword minitx has no use for, saying where minitx has it instead."""
    for key in sorted(kwargs.keys() & ELSEWHERE.keys()):
        raise TypeError(f"{call} takes no {key} (a TransformerLens keyword); in minitx: {ELSEWHERE[key]}")
