"""The intervention engine: running patched forwards from a cached run, and the exact shortcuts that allow.

Activation patching, path patching and attribution patching (minitx.patching, .path_patching,
.attribution) are built on these pieces and never on each other:

    Corruption                        a corrupted input: tokens, tokens plus embedding hooks, or stored values
    token_batch(tokens)               the batch-shape check: token ids [pos] or [batch, pos] -> [batch, pos]
    check_metric_values(values, b)    a metric's output must be a finite tensor [batch]
    differing_positions(a, b)         positions where any prompt of a pair differs
    shared_prefix(a, b)               the number of leading positions every prompt pair shares
    check_same_shape(clean, corr)     a one-line error saying the two lengths and where tokens differ
    position_mask(positions, b, n)    None / int / list / LongTensor / bool mask -> bool [batch, pos]
    Shortcuts, shortcuts(...)         what causal attention lets a patched run skip, as data
    cached_past(cache, layers, p, n)  earlier positions' keys and values, for a run of positions p..
    final_resid(model, x, ...)        the residual stream after the last block, from any layer's resid_pre
    metric_blocks(model, resid, ...)  final residual of n experiments side by side -> metric values [n, batch]
    read_position(metric, b, n)       the one position a `Metric` reads, or None
    EdgeGraph, edge_graph(model)      the edges between components: writers -> readers (docs/methods.md §12.1)
    WriterValues, writer_values, ablation_values    every writer's output: a run's, or its ablated value
    edge_patching(model, tokens, ...) exact edge patching of many edge sets side by side (docs/methods.md §12.2)

The shortcuts are exact, not approximations (docs/analysis-conventions.md, docs/methods.md §1.6):
attention is causal, so a change at position p changes nothing before p; positions before the first
token where the clean and corrupted prompts differ hold identical values in both runs; and a
`minitx.metrics.Metric` that reads position R needs positions 0..R only, and the last block and the
unembedding at R only. They assume every hook acts on each position of the stream it is given; hooks
set with `model.hooks(...)` may index or mix positions, so while any are active
(`model.has_context_hooks`) every run covers every position.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from minitx.checks import check_integers, check_positions, describe
from minitx.metrics import Metric
from minitx.hooks import get_act_name

RESID_LIKE = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")  # [batch, pos, d_model]
HEAD_LIKE = ("z", "q", "k", "v", "pattern")  # per head: [batch, pos, head, d_head] or [batch, head, q, k]
DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class Corruption:
    """A corrupted input: tokens plus hooks on the embeddings (e.g. ROME's noise), or, with
    tokens=None, activation values with no prompt behind them (mean ablation; noising only)."""

    tokens: Tensor | None
    fwd_hooks: tuple = ()
    values: dict | None = None  # point name -> [1, pos, ...]
    name: str = "prompt"


def token_batch(tokens) -> Tensor:
    """Token ids [pos] or [batch, pos] -> [batch, pos]: the model-free half of the model's own token check
    (the vocabulary and n_positions are checked by the forward)."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a LongTensor [batch, pos], got {type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be a LongTensor [batch, pos] of integer ids, got {tokens.dtype}")
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be [batch, pos] with at least one token, got shape {tuple(tokens.shape)}")
    return tokens


def check_metric_values(values, batch: int) -> Tensor:
    """A metric's output: a tensor [batch] of finite numbers (returned as is, gradient kept).

    A NaN or inf would turn every score computed from it into NaN without a word, so it is an error."""
    if not isinstance(values, Tensor) or values.shape != (batch,):
        shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"the metric must map logits [batch, pos, d_vocab] to [batch]=[{batch}], got {shape}")
    bad = ~torch.isfinite(values.detach())
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"the metric returned {float(values.detach()[first])} for prompt {first} ({int(bad.sum())} of {batch} "
                         "prompts not finite); a metric must give a finite number for every prompt")
    return values


# -- prompt pairs ----------------------------------------------------------------------------------
def differing_positions(a: Tensor, b: Tensor) -> list[int]:
    """Positions (over the common length) where any prompt's tokens differ; [] when the batch sizes differ."""
    a, b = token_batch(a), token_batch(b)
    n = min(a.shape[1], b.shape[1])
    if a.shape[0] != b.shape[0]:
        return []
    return (a[:, :n] != b[:, :n]).any(0).nonzero()[:, 0].tolist()


def shared_prefix(a: Tensor, b: Tensor) -> int:
    """The number of leading positions where every prompt of a and b [batch, pos] has the same tokens."""
    return (differing_positions(a, b) or [token_batch(a).shape[1]])[0]


def check_same_shape(clean: Tensor, corrupted: Tensor | Corruption) -> None:
    """ValueError saying the two lengths and where tokens differ, unless the shapes match."""
    other = corrupted.tokens if isinstance(corrupted, Corruption) else corrupted
    if other is None:  # prompt-free values: check their positions axis
        other_shape = next(iter(corrupted.values.values())).shape[:2]
        other_shape = (clean.shape[0], other_shape[1])
    else:
        other_shape = tuple(token_batch(other).shape)
    shape = tuple(token_batch(clean).shape)
    if shape == other_shape:
        return
    if shape[0] != other_shape[0]:
        raise ValueError(f"clean has {shape[0]} prompts and corrupted {other_shape[0]}; patching pairs them "
                         "one to one")
    where = ""
    if other is not None:
        diff, n, end = differing_positions(clean, other), min(shape[1], other_shape[1]), max(shape[1], other_shape[1])
        where = f" Over the first {n} positions tokens differ at {diff}; positions {n}..{end - 1} exist in only one."
    raise ValueError(f"clean and corrupted prompts must have the same length to patch position by position: "
                     f"clean has {shape[1]} tokens, corrupted {other_shape[1]}.{where} Use a corruption that "
                     "keeps token counts (e.g. swap single-token names).")


def position_mask(positions, batch: int, n_pos: int) -> Tensor:
    """None (all), int, list of ints, LongTensor [batch] or [batch, k], or bool [batch, pos] -> bool [batch, pos]."""
    if positions is None:
        return torch.ones(batch, n_pos, dtype=torch.bool)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.shape != (batch, n_pos):
            raise ValueError(f"a boolean position mask must be [batch, pos]=[{batch}, {n_pos}], "
                             f"got {tuple(positions.shape)}")
        return positions.cpu()
    usage = ("positions must be None, an int, a list of ints, a LongTensor [batch] or [batch, k], "
             f"or a bool mask [batch, pos]; got {describe(positions)}")
    try:
        check_integers(positions, "positions", "")
    except TypeError:
        raise ValueError(usage) from None
    if isinstance(positions, (list, tuple)):
        if not positions:
            raise ValueError("positions is an empty list: give at least one position, or None for all")
        positions = torch.tensor(positions, dtype=torch.long).expand(batch, -1)
    elif isinstance(positions, int):
        positions = torch.full((batch, 1), positions, dtype=torch.long)
    elif isinstance(positions, Tensor) and positions.dim() == 1:
        positions = positions[:, None]
    if not isinstance(positions, Tensor) or positions.dim() != 2 or positions.shape[0] != batch:
        raise ValueError(usage)
    flat = check_positions(positions.reshape(-1).cpu(), n_pos, "positions").view(batch, -1)
    return torch.zeros(batch, n_pos, dtype=torch.bool).scatter_(1, flat, True)


# -- the exact shortcuts, as data ------------------------------------------------------------------
@dataclass(frozen=True)
class Shortcuts:
    """What a patched run may skip and still equal the full run exactly (module docstring).

    exact_positions: False under context hooks: then shared = 0 and no position is dropped.
    shared: positions 0..shared-1 hold the same values in the clean and the corrupted run.
    read: the one position the metric reads in every prompt, or None (read everywhere).
    n_pos: positions a run must compute, 0..n_pos-1 (read + 1, or all).
    keep: 1 when only the read position need leave the last block (`keep_last=1`), else None."""

    exact_positions: bool
    shared: int
    read: int | None
    n_pos: int
    keep: int | None


def shortcuts(model, clean: Tensor, corrupted: Tensor | Corruption | None, metric: Callable | None) -> Shortcuts:
    """The Shortcuts for running patched versions of `clean` against `corrupted` (tokens, a Corruption or None:
    then no shared prefix is assumed) under `metric` (None: the metric reads every position)."""
    batch, n_pos = clean.shape
    if model.has_context_hooks:  # they may index positions: nothing is skipped
        return Shortcuts(False, 0, None, n_pos, None)
    if isinstance(corrupted, Corruption):  # hooks or stored values may differ anywhere
        corrupted = corrupted.tokens if corrupted.tokens is not None and not corrupted.fwd_hooks else None
    shared = 0 if corrupted is None else shared_prefix(clean, corrupted)
    read = None if metric is None else read_position(metric, batch, n_pos)
    return Shortcuts(True, shared, read, n_pos if read is None else read + 1, None if read is None else 1)


def cached_past(cache, layers, p: int, n: int) -> list | None:
    """past_kv for a run of positions p..: the cached run's keys and values of positions < p in `layers`,
    repeated for n experiments side by side ([n * batch, p, head, d_head] each); None when p is 0."""
    return None if not p else [(cache[get_act_name("k", j)][:, :p].repeat(n, 1, 1, 1),
                                cache[get_act_name("v", j)][:, :p].repeat(n, 1, 1, 1)) for j in layers]


# -- running from a cached residual ---------------------------------------------------------------
def final_resid(model, x: Tensor, start_at_layer: int | None = None, fwd_hooks=(), past_kv=None) -> Tensor:
    """Returns the residual stream after the last block [rows, pos, d_model], not unembedded:
    runs the blocks from start_at_layer (x is then that layer's resid_pre) with fwd_hooks."""
    return model.run_with_hooks(x, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layer,
                                past_kv=past_kv, fwd_hooks=list(fwd_hooks))


def read_position(metric: Callable, batch: int, n_pos: int) -> int | None:
    """The one position a `Metric` reads in every prompt, or None (another callable, or per-prompt positions)."""
    if not isinstance(metric, Metric):
        return None
    idx = check_positions(metric.pos, n_pos, batch=batch)
    return int(idx[0]) if bool((idx == idx[0]).all()) else None


def metric_blocks(model, resid: Tensor, metric: Callable, batch: int, ln_final_scale: Tensor | None = None,
                  read_only: bool = False) -> Tensor:
    """Final residual [n * batch, pos, d_model] (row block i = experiment i) -> metric values [n, batch].
    A `Metric` is unembedded only at its position; ln_final_scale [batch, pos, 1] freezes ln_final.
    read_only: resid holds only the Metric's read position, [n * batch, 1, d_model] (a keep_last=1 run)."""
    n = resid.shape[0] // batch
    scale = None if ln_final_scale is None else ln_final_scale.repeat(n, 1, 1)  # [rows, pos, 1]
    if isinstance(metric, Metric) and (read_only or not model.has_context_hooks):  # those may index positions
        values = _metric_at_read(model, resid, metric, batch, scale, read_only)
    else:
        values = []
        for i in range(n):
            rows_i = slice(i * batch, (i + 1) * batch)
            hooks = [] if scale is None else [("ln_final.hook_scale", lambda x, h, s=scale[rows_i]: s)]
            values.append(metric(model.unembed(resid[rows_i], fwd_hooks=hooks)))
    return torch.stack([_at_least_float32(check_metric_values(v, batch)) for v in values])


def _at_least_float32(values: Tensor) -> Tensor:
    """Metric values in float32, or float64 for a float64 model (a half-precision metric is too coarse to patch)."""
    return values if values.dtype == torch.float64 else values.float()


def _metric_at_read(model, resid: Tensor, metric: Metric, batch: int, scale: Tensor | None, read_only: bool):
    """metric_blocks for a Metric: unembed each row at its read position only (and only the token ids
    the metric reads, when it says which) -> a list of n value tensors [batch]."""
    rows, n_pos = resid.shape[:2]
    ar, idx, at_read = torch.arange(rows, device=resid.device), None, resid  # at_read: [rows, 1, d_model]
    if not read_only or scale is not None:  # the read position in the full run's positions
        idx = check_positions(metric.pos, n_pos if scale is None else scale.shape[1], batch=batch)
        idx = idx.to(resid.device).repeat(rows // batch)
    if not read_only:
        at_read = resid[ar, idx][:, None]
    hooks = [] if scale is None else [("ln_final.hook_scale", lambda x, h: scale[ar, idx][:, None])]
    ids, d_vocab = metric.token_ids, model.cfg.d_vocab
    if ids is not None and bool(((ids >= 0) & (ids < d_vocab)).all()):  # out of range: at_pos says so
        ids = ids.to(resid.device)
        logits = resid.new_full((rows, d_vocab), float("nan"))  # columns at_pos never reads stay NaN
        logits[:, ids] = model.unembed(at_read, fwd_hooks=hooks, token_ids=ids)[:, 0]
    else:
        logits = model.unembed(at_read, fwd_hooks=hooks)[:, 0]
    return [metric.at_pos(block) for block in logits.view(rows // batch, batch, -1)]


# -- the edge graph (docs/methods.md §12.1) ----------------------------------------------------------
@dataclass(frozen=True)
class EdgeGraph:
    """The edges between a GPT-2's components. Writers put something into the residual stream: the input
    (embed + pos_embed), each head (its z W_O, without b_O), each MLP (its output, with b_out). Readers
    take a sum of writers out of it: each head's query, key and value input separately, each MLP's
    input, and the logits (the final residual). An edge u -> v exists when u writes before v reads: a
    head reads the stream before its layer's attention, an MLP after it, so a head feeds later layers'
    heads and MLPs from its own layer on; an MLP feeds later layers.

    Writer indices: 0 = input, then per layer l the heads l.0 .. l.(H-1) and the MLP. Reader indices:
    per layer l the queries of heads 0..H-1, their keys, their values, then the MLP input; last the logits.
    Both orders are topological. edges: (writer, reader) pairs ordered by reader, then writer."""

    n_layer: int
    n_head: int

    @property
    def n_writers(self) -> int:
        return 1 + self.n_layer * (self.n_head + 1)

    @property
    def n_readers(self) -> int:
        return self.n_layer * (3 * self.n_head + 1) + 1

    def writer(self, kind: str, layer: int | None = None, head: int | None = None) -> int:
        """Index of the writer "input", ("head", layer, head) or ("mlp", layer)."""
        if kind == "input":
            return 0
        return 1 + layer * (self.n_head + 1) + (head if kind == "head" else self.n_head)

    def reader(self, kind: str, layer: int | None = None, head: int | None = None) -> int:
        """Index of the reader ("q"|"k"|"v", layer, head), ("mlp", layer) or "logits"."""
        if kind == "logits":
            return self.n_layer * (3 * self.n_head + 1)
        base = layer * (3 * self.n_head + 1)
        return base + 3 * self.n_head if kind == "mlp" else base + "qkv".index(kind) * self.n_head + head

    @functools.cached_property
    def writer_labels(self) -> tuple[str, ...]:
        per_layer = [[f"{l}.{h}" for h in range(self.n_head)] + [f"mlp{l}"] for l in range(self.n_layer)]
        return ("input", *[label for layer in per_layer for label in layer])

    @functools.cached_property
    def reader_labels(self) -> tuple[str, ...]:
        per_layer = [[f"{l}.{h}.{c}" for c in "qkv" for h in range(self.n_head)] + [f"mlp{l}"]
                     for l in range(self.n_layer)]
        return (*[label for layer in per_layer for label in layer], "logits")

    def writer_time(self, w: int) -> int:
        """When writer w writes: input -1; the heads of layer l 2l; its MLP 2l + 1."""
        if w == 0:
            return -1
        layer, offset = divmod(w - 1, self.n_head + 1)
        return 2 * layer + (offset == self.n_head)

    def reader_time(self, r: int) -> int:
        """When reader r reads: q/k/v of layer l at 2l (before l's heads write), its MLP at 2l + 1, logits 2L."""
        layer, offset = divmod(r, 3 * self.n_head + 1)
        return 2 * layer + (offset == 3 * self.n_head)

    @functools.cached_property
    def reader_owner(self) -> Tensor:
        """[n_readers] LongTensor: the writer index of the component each reader feeds (a head's q, k and v
        inputs feed that head, an MLP input its MLP); -1 for the logits."""
        owner = torch.full((self.n_readers,), -1, dtype=torch.long)
        for layer in range(self.n_layer):
            for head in range(self.n_head):
                for kind in "qkv":
                    owner[self.reader(kind, layer, head)] = self.writer("head", layer, head)
            owner[self.reader("mlp", layer)] = self.writer("mlp", layer)
        return owner

    @functools.cached_property
    def edges(self) -> Tensor:
        """[n_edges, 2] LongTensor of (writer, reader), ordered by reader, then writer."""
        writes = torch.tensor([self.writer_time(w) for w in range(self.n_writers)])
        reads = torch.tensor([self.reader_time(r) for r in range(self.n_readers)])
        reader, writer = (writes[None, :] < reads[:, None]).nonzero(as_tuple=True)  # row-major: by reader, then writer
        return torch.stack([writer, reader], 1)

    @property
    def n_edges(self) -> int:
        return edge_count(self.n_layer, self.n_head)

    def label(self, e: int) -> str:
        w, r = self.edges[e].tolist()
        return f"{self.writer_labels[w]} -> {self.reader_labels[r]}"

    def dense(self, mask: Tensor) -> Tensor:
        """Edge masks [..., n_edges] -> [..., n_writers, n_readers] (False where no edge exists)."""
        out = mask.new_zeros(*mask.shape[:-1], self.n_writers, self.n_readers)
        out[..., self.edges[:, 0], self.edges[:, 1]] = mask
        return out


def edge_count(n_layer: int, n_head: int) -> int:
    """The number of edges of EdgeGraph(n_layer, n_head), in closed form: the 3H readers of layer r read the
    input and the r(H + 1) heads and MLPs before them; the MLP of layer r reads the input, (r + 1)H heads
    and r MLPs; the logits read all 1 + L(H + 1) writers. GPT-2 small (12 x 12): 32,491."""
    L, H = n_layer, n_head
    heads = 3 * H * (L + (H + 1) * L * (L - 1) // 2)
    mlps = L + H * L * (L + 1) // 2 + L * (L - 1) // 2
    return heads + mlps + 1 + L * (H + 1)


def edge_graph(model) -> EdgeGraph:
    """The EdgeGraph of a loaded model (one per shape, so its edge list is built once)."""
    return _graph_of_shape(model.cfg.n_layer, model.cfg.n_head)


@functools.lru_cache(maxsize=16)
def _graph_of_shape(n_layer: int, n_head: int) -> EdgeGraph:
    return EdgeGraph(n_layer, n_head)


# -- exact edge patching (docs/methods.md §12.2) ------------------------------------------------------
ABLATIONS = ("resample", "mean", "zero")


@dataclass(frozen=True)
class WriterValues:
    """Every writer's output on some run, or its ablated value: input [rows, pos, d_model] (rows: the batch,
    or 1 to broadcast), heads [layer] of [rows, pos, head, d_model], mlps [layer] of [rows, pos, d_model].
    ablation: how they were made ("resample", "mean", "zero", or "run" for a run's own values)."""

    input: Tensor
    heads: tuple
    mlps: tuple
    ablation: str = "run"


def writer_points(n_layer: int) -> list[str]:
    """The points holding every writer's output: hook_resid_pre of block 0 (the input, embed + pos_embed),
    each layer's hook_result (per head), each layer's hook_mlp_out."""
    return ([get_act_name("resid_pre", 0)] + [get_act_name("result", l) for l in range(n_layer)]
            + [get_act_name("mlp_out", l) for l in range(n_layer)])


def writers_of(cache, n_layer: int, ablation: str = "run") -> WriterValues:
    """WriterValues read (detached) from a cache holding `writer_points(n_layer)`."""
    names = [cache[n].detach() for n in writer_points(n_layer)]
    return WriterValues(names[0], tuple(names[1:n_layer + 1]), tuple(names[n_layer + 1:]), ablation)


@torch.no_grad()
def writer_values(model, tokens: Tensor, ablation: str = "run") -> WriterValues:
    """The output of every writer on a run of tokens [batch, pos] (`writer_points`)."""
    L = model.cfg.n_layer
    _, cache = model.run_with_cache(token_batch(tokens), names_filter=writer_points(L), stop_at_layer=L)
    return writers_of(cache, L, ablation)


def ablation_values(model, ablation: str, tokens: Tensor, *, corrupted: Tensor | None = None,
                    reference: Tensor | None = None) -> WriterValues:
    """The values an ablated edge carries, for prompts `tokens` [batch, pos]. ablation: "resample" (the
    writers' outputs on `corrupted`, paired prompt by prompt), "mean" (their mean over the `reference`
    prompts, position by position: [1, pos, ...]) or "zero". Always named: circuits depend on it
    (Miller et al. 2024)."""
    tokens = token_batch(tokens)
    if ablation == "resample":
        if corrupted is None:
            raise ValueError("ablation='resample' needs corrupted= prompts (one per clean prompt)")
        check_same_shape(tokens, corrupted)
        return writer_values(model, corrupted, "resample")
    if ablation == "mean":
        if reference is None:
            raise ValueError("ablation='mean' needs reference= prompts to average the writers' outputs over")
        check_same_shape(tokens[:1].expand(len(token_batch(reference)), -1), reference)
        run = writer_values(model, reference)
        mean = lambda x: x.double().mean(0, keepdim=True).to(x.dtype)  # noqa: E731
        return WriterValues(mean(run.input), tuple(map(mean, run.heads)), tuple(map(mean, run.mlps)), "mean")
    if ablation == "zero":
        run = writer_values(model, tokens[:1])
        return WriterValues(torch.zeros_like(run.input), tuple(map(torch.zeros_like, run.heads)),
                            tuple(map(torch.zeros_like, run.mlps)), "zero")
    raise ValueError(f"ablation={ablation!r}: use one of {', '.join(ABLATIONS)} (always name it: the circuit "
                     "found depends on it)")


class _EdgePatch:
    """The hooks of one edge-patched forward of n edge sets side by side (rows: n x batch), over the positions
    the run computes (all, or those after a shared prefix).

    Each writer's change, current output - ablated value, is recorded as it is computed into one buffer
    [writer, n, batch * pos * d_model], with their running sum. A reader's input, already the sum of the
    current writers (and biases), must become
        in_v = sum over kept u of a_u(this run) + sum over patched u of a_u(ablated) + biases
             = in_v(now) - sum over patched u of change_u = in_v(now) - all changes + sum over kept u of change_u,
    whichever form reads fewer writers: circuits keep few edges, complements patch few. One matmul per group of
    readers (a layer's q, k and v inputs; an MLP input; the logits) over only the writers it needs."""

    def __init__(self, graph: EdgeGraph, patched: Tensor, ablated: WriterValues, batch: int, first: int):
        self.graph, self.B, self.n, self.first = graph, batch, len(patched), first
        device = ablated.input.device
        self.patched = graph.dense(patched).transpose(1, 2).to(device)  # bool [n, reader, writer]
        self.kept = graph.dense(~patched).transpose(1, 2).to(device)  # edges that exist and are not patched
        self.ablated, self.deltas, self.total, self.written, self.changes = ablated, None, None, 0, {}

    def _record(self, current: Tensor, ablated: Tensor) -> None:
        """current [n * batch, pos, (k,) d_model]: the next k writers' outputs; ablated: theirs from all positions."""
        n, B = self.n, self.B
        current = current.view(n, B, *current.shape[1:])
        current = current if current.dim() == 5 else current.unsqueeze(3)  # [n, batch, pos, k, d_model]
        ablated = ablated[:, self.first:]
        change = current - (ablated if ablated.dim() == 4 else ablated.unsqueeze(2))[None]
        if self.deltas is None:
            self.deltas = change.new_empty(self.graph.n_writers, n, change[0, :, :, 0].numel())  # writer-major
            self.total = change.new_zeros(n, change[0, :, :, 0].numel())
        k = change.shape[3]
        self.deltas[self.written:self.written + k] = change.permute(3, 0, 1, 2, 4).reshape(k, n, -1)
        self.total += self.deltas[self.written:self.written + k].sum(0)
        self.written += k

    def _change(self, readers: range) -> Tensor:
        """What the readers' inputs lose, [n, readers, batch * pos * d_model]: per edge set, in the form that reads
        fewer writers (gathering those writers' changes unless they are most of them)."""
        W, rows = self.written, slice(readers.start, readers.stop)
        out = self.total.new_empty(self.n, len(readers), self.total.shape[1])
        for i in range(self.n):
            forms = [(self.patched[i, rows, :W], False), (self.kept[i, rows, :W], True)]
            used = [mask.any(0).nonzero()[:, 0] for mask, _ in forms]
            (mask, kept), used = min(zip(forms, used), key=lambda pair: len(pair[1]))
            if 2 * len(used) > W:
                weights, deltas = mask.to(out.dtype), self.deltas[:W, i]  # [readers, writers], [writers, ...]
            else:
                weights, deltas = mask[:, used].to(out.dtype), self.deltas[used, i]
            if kept:  # all changes less the kept ones
                torch.addmm(self.total[i:i + 1], weights, deltas, alpha=-1, out=out[i])
            else:
                torch.mm(weights, deltas, out=out[i])
        return out

    def _correct(self, x: Tensor, readers: range, part: slice = slice(None)) -> Tensor:
        """x: the readers' current input, [rows, pos, head, d_model] (q/k/v copies) or [rows, pos, d_model].
        A layer's q, k and v readers are done in one matmul at the first of them (`part` picks this one's)."""
        if readers not in self.changes:  # the group's first reader: compute the group's changes, drop the last's
            self.changes = {readers: self._change(readers)}
        n, B, T, d = self.n, self.B, x.shape[1], x.shape[-1]
        change = self.changes[readers][:, part]
        R = change.shape[1]
        change = change.view(n, R, B, T, d).permute(0, 2, 3, 1, 4)  # [n, batch, pos, readers, d_model], a view
        return (x.view(n, B, T, R, d) - change).reshape(x.shape)

    def hooks(self, reads: set[int]) -> list:
        """Hooks recording every writer and correcting each reader group in `reads` (readers no edge set patches
        keep the model's fast path)."""
        g, L, H = self.graph, self.graph.n_layer, self.graph.n_head
        hooks = [(get_act_name("resid_pre", 0), lambda x, h: self._record(x, self.ablated.input))]
        for l in range(L):
            qkv = range(g.reader("q", l, 0), g.reader("v", l, H - 1) + 1)
            for i, kind in enumerate("qkv"):
                if reads & set(qkv[i * H:(i + 1) * H]):
                    part = slice(i * H, (i + 1) * H)
                    hooks.append((get_act_name(f"{kind}_input", l), lambda x, h, r=qkv, p=part: self._correct(x, r, p)))
            hooks.append((get_act_name("result", l), lambda x, h, l=l: self._record(x, self.ablated.heads[l])))
            mlp = g.reader("mlp", l)
            if mlp in reads:
                hooks.append((get_act_name("mlp_in", l), lambda x, h, r=range(mlp, mlp + 1): self._correct(x, r)))
            hooks.append((get_act_name("mlp_out", l), lambda x, h, l=l: self._record(x, self.ablated.mlps[l])))
        logits = g.reader("logits")
        if logits in reads:
            hooks.append((get_act_name("resid_post", L - 1), lambda x, h: self._correct(x, range(logits, logits + 1))))
        return hooks


@torch.no_grad()
def _shared_prefix(model, tokens: Tensor, ablated: WriterValues, metric: Callable) -> tuple[int, object, Tensor | None]:
    """-> (first, the clean run's cache with its keys and values, its resid_pre 0). first: the number of leading
    positions where every writer's ablated value equals its clean value in every prompt, bit for bit (a resample
    from prompts sharing a prefix): there every patched run is the clean run, so it can start at `first` with
    the clean run's keys and values (capped at the metric's read position). (0, None, None), running nothing,
    when that cannot apply: context hooks (they may index positions), a metric that may read anywhere (not a
    one-position `Metric`), ablated values with one row for every prompt (mean, zero)."""
    cut, L = shortcuts(model, tokens, None, metric), model.cfg.n_layer
    if not cut.exact_positions or cut.read is None or ablated.input.shape[0] != tokens.shape[0]:
        return 0, None, None
    names = writer_points(L) + [get_act_name(c, l) for l in range(L) for c in "kv"]
    _, cache = model.run_with_cache(tokens, names_filter=names, stop_at_layer=L)
    clean, first = writers_of(cache, L), tokens.shape[1]
    for now, then in zip((clean.input, *clean.heads, *clean.mlps), (ablated.input, *ablated.heads, *ablated.mlps)):
        same = (now == then).reshape(*now.shape[:2], -1).all(-1).all(0)  # [pos]: equal in every prompt
        first = min(first, int(same.long().cumprod(0).sum()))  # the leading positions where they are
    first = min(first, cut.read)
    return (first, cache, clean.input) if first else (0, None, None)


def _sets_per_forward(model, tokens_per_set: int, most: int, device: torch.device) -> int:
    """How many edge sets run side by side: at most `most`, the writers' changes under 2**28 elements (1 GiB in
    float32), and on a CPU each per-head copy of the stream (q, k or v input, [rows, pos, head, d_model]) under
    2**21 elements (8 MiB in float32), a size that stays in cache."""
    cfg = model.cfg
    per_set = tokens_per_set * cfg.d_model
    size = min(most, (1 << 28) // (per_set * (1 + cfg.n_layer * (cfg.n_head + 1))))
    if device.type == "cpu":
        size = min(size, (1 << 21) // (per_set * cfg.n_head))
    return max(1, size)


def edge_patching(model, tokens: Tensor, patched: Tensor, ablated: WriterValues, metric: Callable, *,
                  max_rows: int = 512) -> Tensor:
    """Exact edge patching: metric values [n, batch] of runs of `tokens` [batch, pos] in which, for each of n
    edge sets (patched: bool [n, n_edges] or [n_edges], True = the edge carries its ablated value), every
    reader's input is rebuilt as sum over kept edges of the writer's output IN THIS RUN (already changed by
    earlier patched edges: ACDC's semantics) plus sum over patched edges of the writer's ablated value
    (`ablation_values`: resample, mean or zero). All edges patched with ablation "resample" is the corrupted
    run; none patched is the clean run. Edge sets run side by side, up to max_rows rows per forward (fewer
    where memory or, on a CPU, cache size says; one set still runs all its rows). Under a resample from prompts
    that share a prefix, with a `Metric` reading one position after it and no context hooks, every set runs
    from the prefix's end with one shared clean run's keys and values (exact: before it nothing can change).
    docs/methods.md §12.2; Conmy et al. 2023 (ACDC)."""
    tokens, graph = token_batch(tokens), edge_graph(model)
    patched = (patched[None] if patched.dim() == 1 else patched).cpu()  # the graph's edge list lives on the CPU
    if patched.dtype != torch.bool or patched.dim() != 2 or patched.shape[1] != graph.n_edges:
        raise ValueError(f"patched must be a bool mask [n_sets, n_edges={graph.n_edges}] (or [n_edges]), got "
                         f"{describe(patched)}")
    (B, T), L = tokens.shape, model.cfg.n_layer
    rows, n_pos = ablated.input.shape[:2]
    if rows not in (1, B) or n_pos != T:
        raise ValueError(f"ablated values were made for {rows} prompt(s) of {n_pos} positions, but tokens are {B} "
                         f"prompts of {T}: make them for these prompts, ablation_values(model, ablation, tokens, ...) "
                         "(resample: one corrupted prompt per clean one; mean and zero: one row for all)")
    first, cache, embedded = _shared_prefix(model, tokens, ablated, metric)
    size = _sets_per_forward(model, B * (T - first), max_rows // B, tokens.device)
    out = []
    for start in range(0, len(patched), size):
        chunk = patched[start:start + size]
        patch = _EdgePatch(graph, chunk, ablated, B, first)
        reads = set(graph.edges[chunk.any(0), 1].tolist())
        with torch.no_grad():
            if first:  # from the shared prefix's end, with the clean run's keys and values before it
                final = model.run_with_hooks(embedded[:, first:].repeat(len(chunk), 1, 1), start_at_layer=0,
                                             stop_at_layer=L, past_kv=cached_past(cache, range(L), first, len(chunk)),
                                             fwd_hooks=patch.hooks(reads))
                read = read_position(metric, B, T) - first
                out.append(metric_blocks(model, final[:, read:read + 1], metric, B, read_only=True))
            else:
                final = model.run_with_hooks(tokens.repeat(len(chunk), 1), stop_at_layer=L,
                                             fwd_hooks=patch.hooks(reads))
                out.append(metric_blocks(model, final, metric, B))
    return torch.cat(out)


__all__ = ["Corruption", "RESID_LIKE", "HEAD_LIKE", "DIRECTIONS", "token_batch", "check_metric_values",
           "differing_positions", "shared_prefix", "check_same_shape", "position_mask", "Shortcuts", "shortcuts",
           "cached_past", "final_resid", "read_position", "metric_blocks", "EdgeGraph", "edge_graph", "edge_count", "ABLATIONS",
           "WriterValues", "writer_points", "writers_of", "writer_values", "ablation_values", "edge_patching"]
