"""Figures for the analysis results: the only module of minitx that imports matplotlib.

Every function builds a `matplotlib.figure.Figure` directly and returns it: no pyplot, no global
state, no display needed (headless machines and tests work). `save(fig, path)` writes it through the
Agg canvas. Inputs are tensors (or arrays) with the axes named in each docstring; a batch axis is
never expected, pick the prompt first (e.g. `cache["pattern", 1][0]`).

Colour conventions: attention weights and probabilities use a sequential map on [0, 1]; signed
scores (patching, role index, logit differences) use a diverging map centred at zero with symmetric
limits, so white always means 0; normalised patching maps use the fixed scale [-1, 1] (values beyond
it are written in their cells) so two maps can be compared by colour. Grids are annotated with their
values; every colour bar names what it shows.

`plot_result(result)` picks the figure for any analysis result by its axes (the `minitx.results.Result`
fields), so a caller need not know which function draws which method.

References: the figure types follow TransformerLens/ARENA demos (attention patterns, [layer, head]
and [layer, pos] patching heatmaps) and nostalgebraist 2020, "interpreting GPT: the logit lens"
(the layers x positions table of top tokens).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from minitx.checks import check_choice
from minitx.report import token_label

SEQUENTIAL = "Blues"
DIVERGING = "RdBu_r"  # red positive, blue negative, white zero
ANNOTATE_MAX_CELLS = 160  # grids with at most this many cells get their values written in
PATCHING_ANNOTATE_MAX_CELLS = 640  # patching maps: values in every cell up to this size
MAX_DPI = 600
MAX_PIXELS = 64_000_000  # about 250 MB of RGBA: a figure larger than this is refused, not rendered


# -- helpers ------------------------------------------------------------------------------------
def _array(x, dims: int, what: str) -> np.ndarray:
    """A tensor or array -> float numpy array with exactly `dims` axes (leading size-1 axes dropped)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be numbers (a tensor or an array), got {type(x).__name__}") from None
    while a.ndim > dims and a.shape[0] == 1:
        a = a[0]
    if a.ndim != dims:
        raise ValueError(f"{what} must have {dims} axes, got shape {tuple(a.shape)}")
    return a


_label = token_label  # a token as a tick label (report.token_label)


def position_labels(clean_tokens, corrupted_tokens=None, limit: int = 12) -> list[str]:
    """Tick labels for positions: the clean token, or "clean/corrupted" where a corrupted prompt differs."""
    clean = [str(t) for t in clean_tokens]
    if corrupted_tokens is None:
        return [_label(t, limit) for t in clean]
    corrupted = [str(t) for t in corrupted_tokens]
    if len(corrupted) != len(clean):
        raise ValueError(f"{len(clean)} clean token labels but {len(corrupted)} corrupted ones; one per position")
    return [_label(a, limit) if a == b else f"{_label(a, limit // 2 + 2)}/{_label(b, limit // 2 + 2)}"
            for a, b in zip(clean, corrupted)]


def _wrap(title: str, width_inches: float, fontsize: float = 10.0) -> str:
    """Breaks a title into lines that fit a figure (or panel) of this width."""
    chars = max(16, int(width_inches * 120 / fontsize))
    return "\n".join(textwrap.fill(part, chars) for part in str(title).split("\n"))


def _font(n: int) -> float:
    """Tick font size for n labels on one axis."""
    return max(5.0, min(10.0, 260.0 / max(n, 1)))


def _check_labels(labels, n: int, what: str) -> list[str]:
    labels = [str(t) for t in labels]
    if len(labels) != n:
        raise ValueError(f"{what}: {len(labels)} token labels for {n} positions; pass one label per position")
    return labels


def _signed_norm(data: np.ndarray, limit: float | None = None) -> Normalize:
    """Diverging normalisation centred at 0 with symmetric limits."""
    finite = data[np.isfinite(data)]
    lim = limit if limit is not None else (float(np.abs(finite).max()) if finite.size else 1.0)
    lim = max(lim, 1e-9)
    return TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)


def _annotate(ax, data: np.ndarray, norm: Normalize, fmt: str = ".2f", limit: int = ANNOTATE_MAX_CELLS) -> None:
    if data.size > limit:
        return
    size = max(5.0, min(9.0, 120.0 / max(data.shape[1], 1)))
    centred = isinstance(norm, TwoSlopeNorm)
    for (i, j), v in np.ndenumerate(data):
        text, dark = "nan", False
        if np.isfinite(v):
            shade = float(norm(v))  # 0..1 along the colour map
            text = format(v + 0.0, fmt)  # + 0.0: no "-0.00"
            text = format(0.0, fmt) if float(text) == 0 else text
            dark = abs(shade - 0.5) > 0.3 if centred else shade > 0.6
        ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if dark else "black")


def _layer_head_axes(fig, ax, scores: np.ndarray, title: str, diverging: bool, limits=None,
                     colorbar_label: str = "", fmt: str = ".2f", width: float = 4.0):
    n_layer, n_head = scores.shape
    if diverging:
        norm, cmap = _signed_norm(scores, None if limits is None else max(abs(limits[0]), abs(limits[1]))), DIVERGING
    else:
        finite = scores[np.isfinite(scores)]
        lo, hi = limits if limits is not None else ((float(finite.min()), float(finite.max())) if finite.size
                                                    else (0.0, 1.0))
        norm, cmap = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-9), SEQUENTIAL
    image = ax.imshow(scores, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_head), [str(h) for h in range(n_head)], fontsize=_font(n_head))
    ax.set_yticks(range(n_layer), [str(l) for l in range(n_layer)], fontsize=_font(n_layer))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(_wrap(title, width), fontsize=10)
    _annotate(ax, scores, norm, fmt)
    fig.colorbar(image, ax=ax, shrink=0.85, label=colorbar_label)
    return image


# -- attention --------------------------------------------------------------------------------------
def attention_pattern(pattern, str_tokens, title: str = "attention pattern") -> Figure:
    """Returns a Figure of one head's attention pattern [q_pos, k_pos]; tokens label both axes.
    Rows are queries (the position attending), columns keys (the position read)."""
    A = _array(pattern, 2, "pattern [q_pos, k_pos]")
    labels = [_label(t) for t in _check_labels(str_tokens, A.shape[1], "attention_pattern")]
    n = len(labels)
    side = min(14.0, max(4.5, 0.28 * n + 2.0))
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(A, cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=_font(n))
    ax.set_yticks(range(A.shape[0]), labels[:A.shape[0]], fontsize=_font(n))
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(_wrap(title, side), fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig


def attention_grid(patterns, str_tokens, layer: int, title: str | None = None) -> Figure:
    """Returns a Figure with one panel per head of `layer`: patterns [head, q_pos, k_pos]."""
    P = _array(patterns, 3, "patterns [head, q_pos, k_pos]")
    H, n = P.shape[0], P.shape[2]
    if H == 0 or n == 0:
        raise ValueError(f"attention_grid needs at least one head and one position, got patterns of shape {P.shape}")
    labels = [_label(t, 8) for t in _check_labels(str_tokens, n, "attention_grid")]
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    panel = min(6.0, max(2.8, 0.16 * n + 1.5))
    label_room = 0.8 + 0.08 * max(len(t) for t in labels)  # rotated key labels below, the title above
    fig = Figure(figsize=(panel * cols + 1.0, panel * rows + label_room), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= H:
            ax.set_axis_off()
            continue
        image = ax.imshow(P[h], cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"head {layer}.{h}", fontsize=10)
        show_x, show_y = h // cols == rows - 1 or h + cols >= H, h % cols == 0
        ax.set_xticks(range(n), labels if show_x else [], rotation=90, fontsize=_font(n) * 0.8)
        ax.set_yticks(range(P.shape[1]), labels[:P.shape[1]] if show_y else [], fontsize=_font(n) * 0.8)
        if show_x:
            ax.set_xlabel("key")
        if show_y:
            ax.set_ylabel("query")
    fig.suptitle(_wrap(title or f"attention patterns, layer {layer}", panel * cols, 11), fontsize=11)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    return fig


# -- [layer, head] and [layer, pos] scores ------------------------------------------------------------
def layer_head_grid(scores, title: str, diverging: bool = True, *, limits: tuple[float, float] | None = None,
                    colorbar_label: str = "score", fmt: str = ".2f") -> Figure:
    """Returns a Figure of scores [layer, head]: diverging (centred at 0, symmetric limits) or sequential.
    Values are written into the cells when the grid is small."""
    S = _array(scores, 2, "scores [layer, head]")
    width = min(14.0, max(4.5, 0.55 * S.shape[1] + 2.5))
    fig = Figure(figsize=(width, min(12.0, max(3.0, 0.45 * S.shape[0] + 1.8))), layout="constrained")
    _layer_head_axes(fig, fig.add_subplot(), S, title, diverging, limits, colorbar_label, fmt, width - 1.0)
    return fig


def layer_head_grids(scores: dict, title: str = "", diverging: bool = False, *,
                     limits: tuple[float, float] | None = (0.0, 1.0),
                     colorbar_label: str = "mean attention mass") -> Figure:
    """Returns a Figure with one [layer, head] panel per entry of scores {name: [layer, head]}, side by side.
    The default limits [0, 1] and colour-bar label suit attention-mass scores (previous-token, induction, BOS)."""
    if not scores:
        raise ValueError("layer_head_grids needs at least one score table")
    arrays = {name: _array(s, 2, f"{name} [layer, head]") for name, s in scores.items()}
    first = next(iter(arrays.values()))
    width = min(5.0, max(2.6, 0.5 * first.shape[1] + 1.8))
    height = min(10.0, max(2.6, 0.45 * first.shape[0] + 1.6))
    fig = Figure(figsize=(width * len(arrays) + 0.5, height + 0.4), layout="constrained")
    axes = fig.subplots(1, len(arrays), squeeze=False)[0]
    for ax, (name, S) in zip(axes, arrays.items()):
        _layer_head_axes(fig, ax, S, name, diverging, limits, colorbar_label, width=width - 1.0)
    if title:
        fig.suptitle(_wrap(title, width * len(arrays), 11), fontsize=11)
    return fig


def patching_heatmap(scores, str_tokens, title: str, *, row_labels=None, ylabel: str = "layer",
                     colorbar_label: str = "score (1 clean, 0 corrupted)", corrupted_tokens=None,
                     limit: float | None = 1.0) -> Figure:
    """Returns a Figure of scores [layer, pos] (or [row, pos] with row_labels), diverging around 0 on the fixed
    scale [-limit, limit] (None: the data's own largest magnitude), each cell's value written in.
    The prompt's tokens label the positions; with corrupted_tokens, positions where they differ read
    "clean/corrupted"."""
    S = _array(scores, 2, "scores [layer, pos]")
    labels = _check_labels(str_tokens, S.shape[1], "patching_heatmap")
    labels = position_labels(labels, None if corrupted_tokens is None else
                             _check_labels(corrupted_tokens, S.shape[1], "patching_heatmap corrupted_tokens"))
    rows = [str(r) for r in (row_labels if row_labels is not None else range(S.shape[0]))]
    if len(rows) != S.shape[0]:
        raise ValueError(f"patching_heatmap: {len(rows)} row labels for {S.shape[0]} rows")
    width = min(18.0, max(4.5, 0.42 * S.shape[1] + 2.5))
    fig = Figure(figsize=(width, min(14.0, max(3.0, 0.32 * S.shape[0] + 2.0))), layout="constrained")
    ax = fig.add_subplot()
    norm = _signed_norm(S, limit)
    image = ax.imshow(S, cmap=DIVERGING, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=_font(len(labels)))
    ax.set_yticks(range(len(rows)), rows, fontsize=_font(len(rows)))
    ax.set_xlabel("position (token)")
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title, width - 1.0), fontsize=10)
    _annotate(ax, S, norm, ".2f", PATCHING_ANNOTATE_MAX_CELLS)
    fig.colorbar(image, ax=ax, shrink=0.85, label=colorbar_label, extend="both" if limit is not None else "neither")
    return fig


# -- logit lens -------------------------------------------------------------------------------------------
def _decoder(tokenizer):
    if tokenizer is None:
        return str
    if hasattr(tokenizer, "decode"):
        return lambda i: tokenizer.decode([i])
    if callable(tokenizer):
        return tokenizer
    raise TypeError(f"tokenizer must be None, an object with decode(ids) or a callable id -> str, "
                    f"got {type(tokenizer).__name__}")


def lens_table(result, str_tokens, tokenizer=None, *, batch: int = 0, color_by: str | None = None,
               title: str | None = None) -> Figure:
    """Returns the classic logit-lens Figure: layers x positions, each cell the top-1 token at that layer,
    coloured by its probability (color_by="top") or by the target's probability (color_by="target",
    the default when the LensResult has targets). Cells where the target is top-1 are bold.

    result: a `minitx.lens.LensResult`; str_tokens: labels for every position of the prompt (or for
    result.positions only); tokenizer: None (ids shown), an object with decode(ids), or id -> str."""
    batch = result.check_batch(batch)
    top_ids = result.top_tokens[:, batch, :, 0]  # [layer+1, pos]
    has_target = result.target_probs is not None
    color_by = color_by or ("target" if has_target else "top")
    check_choice(color_by, "color_by", ("top", "target"))
    if color_by == "target" and not has_target:
        raise ValueError("color_by='target' needs a LensResult computed with targets")
    values = _array(result.target_probs[:, batch] if color_by == "target" else result.top_probs[:, batch, :, 0],
                    2, "lens probabilities")
    positions = [int(p) for p in result.positions]
    tokens = [str(t) for t in str_tokens]
    if len(tokens) != len(positions):
        if max(positions) >= len(tokens):
            raise ValueError(f"lens_table: {len(tokens)} token labels but the lens read position {max(positions)}")
        tokens = [tokens[p] for p in positions]
    decode = _decoder(tokenizer)
    n_rows, n_pos = values.shape
    width = min(22.0, max(5.0, 0.75 * n_pos + 2.5))
    fig = Figure(figsize=(width, min(14.0, max(3.0, 0.42 * n_rows + 2.0))), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=SEQUENTIAL, vmin=0.0, vmax=1.0, aspect="auto", origin="lower",
                      interpolation="nearest")
    ranks = result.target_ranks[:, batch] if has_target else None
    size = max(5.0, min(9.0, 140.0 / max(n_pos, 1)))
    for i in range(n_rows):
        for j in range(n_pos):
            text = _label(decode(int(top_ids[i, j])), 7)
            bold = ranks is not None and int(ranks[i, j]) == 0
            ax.text(j, i, text, ha="center", va="center", fontsize=size, fontweight="bold" if bold else "normal",
                    color="white" if values[i, j] > 0.6 else "black")
    ax.set_xticks(range(n_pos), [_label(t) for t in tokens], rotation=90, fontsize=_font(n_pos))
    ax.set_yticks(range(n_rows), list(result.labels), fontsize=_font(n_rows))
    ax.set_xlabel("input position (token)")
    ax.set_ylabel("residual stream read")
    what = "p(target)" if color_by == "target" else "p(top-1 token)"
    ax.set_title(_wrap(title or f"logit lens: top-1 token per layer and position; colour = {what}"
                       + (" (bold: target is top-1)" if has_target else ""), width - 1.0), fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.85, label=what)
    return fig


def lens_comparison(scores: dict, trajectories: dict | None = None, target: str = "target", *,
                    title: str = "lenses compared") -> Figure:
    """Returns a Figure comparing lenses layer by layer: KL(p_final || p_layer) in nats (log scale) and top-1
    agreement with the model's own prediction, plus, with `trajectories`, p(target) at one prompt's last
    position under each lens. Belrose et al. 2023 (tuned lens); Gurnee et al. 2026 (Jacobian lens).

    scores: `minitx.lens.lens_scores(...)`, {name: {"labels", "kl", "top1", "n_positions"}};
    trajectories: {name: LensResult of one prompt read with targets}; layers align by label."""
    order = []
    for name in scores:
        order += [label for label in scores[name]["labels"] if label not in order]
    final = [label for label in order if label != "final"] + ["final"]
    x = {label: i for i, label in enumerate(final)}
    panels = 2 + (trajectories is not None)
    fig = Figure(figsize=(4.2 * panels + 0.5, 3.8), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for name, s in scores.items():
        xs = [x[label] for label in s["labels"]]
        axes[0].plot(xs[:-1], s["kl"][:-1], marker="o", label=name)  # "final" is 0 by definition: off the log axis
        axes[1].plot(xs, s["top1"], marker="o", label=name)
    n = max(s["n_positions"] for s in scores.values())
    axes[0].set(yscale="log", ylabel="KL(final || layer), nats", title=f"KL to the final distribution ({n:,} positions)")
    axes[1].set(ylim=(-0.02, 1.02), ylabel="share of positions", title="top-1 agreement with the model")
    if trajectories is not None:
        for name, result in trajectories.items():
            probs = _array(result.target_probs[:, 0, -1], 1, "target probabilities")
            axes[2].plot([x[label] for label in result.labels], probs, marker="o", label=name)
        axes[2].set(ylim=(-0.02, 1.02), ylabel=f"p({target})", title=f"p({target}) at the last position")
    for ax in axes:
        ax.set_xticks(range(len(final)), final, rotation=45, fontsize=_font(len(final)))
        ax.set_xlabel("residual stream read")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(_wrap(title, 4.2 * panels, 11), fontsize=11)
    return fig


# -- role swap -------------------------------------------------------------------------------------------------
def role_swap_figure(result, title: str = "role swap: how attention changes when the two tokens swap") -> Figure:
    """Returns a Figure of a `minitx.heads.RoleSwap`: TV_pos, TV_tok ([0, 1]) and the role index
    R = TV_tok - TV_pos ([-1, 1]; > 0 the head follows the slot/role, < 0 it follows the token)."""
    panels = [(result.tv_pos, "TV_pos (pattern change, same positions)", False, (0.0, 1.0), "total variation"),
              (result.tv_tok, "TV_tok (change after following the swap)", False, (0.0, 1.0), "total variation"),
              (result.scores, "role index R = TV_tok - TV_pos", True, (-1.0, 1.0), "R (> 0 role, < 0 word)")]
    arrays = [(_array(s, 2, name), name, div, lim, bar) for s, name, div, lim, bar in panels]
    n_layer, n_head = arrays[0][0].shape
    width = min(6.0, max(3.0, 0.5 * n_head + 2.0))
    height = min(10.0, max(2.8, 0.42 * n_layer + 1.6))
    fig = Figure(figsize=(3 * width + 0.5, height + 0.5), layout="constrained")
    axes = fig.subplots(1, 3, squeeze=False)[0]
    for ax, (S, name, div, lim, bar) in zip(axes, arrays):
        _layer_head_axes(fig, ax, S, name, div, lim, bar, width=width - 1.0)
    fig.suptitle(_wrap(title, 3 * width, 11), fontsize=11)
    return fig


# -- direct logit attribution -------------------------------------------------------------------------------------
def dla_bars(result, title: str = "direct logit attribution", *, top: int = 20, prompt: int | None = None) -> Figure:
    """Returns a Figure of a `minitx.dla.DLAResult`: one horizontal bar per component (the `top` largest by
    magnitude, in the model's order), the mean over prompts (or one prompt's values)."""
    values = result.scores if prompt is None else result.per_prompt[:, prompt]
    v = _array(values, 1, "DLA values [component]")
    keep = sorted(np.argsort(-np.abs(np.nan_to_num(v)))[:top].tolist())
    labels = [result.labels[i] for i in keep]
    height = min(12.0, max(3.0, 0.28 * len(keep) + 1.6))
    fig = Figure(figsize=(6.5, height), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#b2182b" if v[i] >= 0 else "#2166ac" for i in keep]
    ax.barh(range(len(keep)), v[keep], color=colours)
    ax.set_yticks(range(len(keep)), labels, fontsize=_font(len(keep)))
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"contribution to the {result.metric or 'logit'} (final LN scale frozen)")
    ax.set_ylabel("component")
    ax.set_title(_wrap(title, 5.5), fontsize=10)
    return fig


# -- any result, by its axes -------------------------------------------------------------------------------------
def plot_result(result, str_tokens=None, title: str | None = None, *, corrupted_tokens=None) -> Figure:
    """Returns the figure for an analysis result, chosen by its type and axes:
    [layer, pos] and [layer] patching maps, [layer, head] grids, [layer, pos, head] as rows L.H, the
    role-swap panels, DLA bars and the logit-lens table. str_tokens label positions (needed for pos axes)."""
    axes = tuple(getattr(result, "axes", ()) or ())
    name = type(result).__name__
    title = title or f"{name}: {getattr(result, 'metric', '') or ''}".rstrip(": ")
    if name == "RoleSwap":
        return role_swap_figure(result, title)
    if name == "DLAResult":
        return dla_bars(result, title)
    if name == "CompositionScores":
        return composition_heatmap(result, title)
    if name == "CopyingScores":  # minitx.circuits: three [layer, head] scores in [-1, 1]
        return layer_head_grids({"copying score": result.scores, "diagonal argmax share": result.argmax_fraction,
                                 "QK self-preference": result.qk_scores}, title, diverging=True, limits=(-1.0, 1.0))
    if name == "PositionalTokenSplit":  # minitx.circuits: shares of the score variance over keys
        return layer_head_grids({**{group: result.scores[..., g] for g, group in enumerate(result.groups)},
                                 "same in every prompt": result.same_in_every_prompt}, title)
    if name == "EdgeScores":  # the 20 edges of largest |score|
        S = _array(result.scores, 1, "edge scores")
        keep = np.zeros(S.shape[0], dtype=bool)
        keep[np.argsort(-np.abs(np.nan_to_num(S)), kind="stable")[:20]] = True
        return circuit_graph(result.graph, S, keep, title)
    if name == "CircuitCurve":
        return faithfulness_figure(result, title)
    if hasattr(result, "top_tokens"):  # a LensResult
        return lens_table(result, str_tokens, title=title)
    S = getattr(result, "scores", None)
    if S is None:
        raise TypeError(f"plot_result needs an analysis result with scores and axes, got {name}")
    if axes == ("layer", "head"):
        return layer_head_grid(S, title, limits=(-1.0, 1.0), colorbar_label="score (1 clean, 0 corrupted)")
    if axes == ("layer",):
        return patching_heatmap(S[:, None] if hasattr(S, "dim") else np.asarray(S)[:, None], ["all positions"], title)
    if axes in (("layer", "pos"), ("layer", "pos", "head")):
        if str_tokens is None:
            raise ValueError("plot_result: a result over positions needs str_tokens, one label per position")
        if axes == ("layer", "pos"):
            return patching_heatmap(S, str_tokens, title, corrupted_tokens=corrupted_tokens)
        L, P, H = S.shape
        rows = [f"{l}.{h}" for l in range(L) for h in range(H)]
        return patching_heatmap(S.permute(0, 2, 1).reshape(-1, P), str_tokens, title, row_labels=rows, ylabel="head",
                                corrupted_tokens=corrupted_tokens)
    raise ValueError(f"plot_result: no figure for a {name} with axes {axes}; known: (layer, head), (layer,), "
                     "(layer, pos), (layer, pos, head), RoleSwap, DLAResult, LensResult, CompositionScores, "
                     "CopyingScores, PositionalTokenSplit, EdgeScores, CircuitCurve")


def faithfulness_figure(result, title: str = "faithfulness of the top-k circuits") -> Figure:
    """Returns a Figure of a `minitx.discovery.CircuitCurve`: F(C) of each circuit and of its complement
    against the number of edges kept (1 = the full model's metric, 0 = every edge patched)."""
    n = _array(result.n_edges, 1, "n_edges [circuit]")
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(n, _array(result.scores, 1, "scores [circuit]"), "o-", color="#b2182b", label="circuit F(C)")
    ax.plot(n, _array(result.complement, 1, "complement [circuit]"), "s--", color="#2166ac",
            label="complement F(not C)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("edges kept (after pruning)")
    ax.set_ylabel(f"faithfulness ({getattr(result, 'ablation', '')} ablation)")
    ax.set_title(_wrap(title, 5.5), fontsize=10)
    ax.legend(fontsize=8)
    return fig


# -- saving ------------------------------------------------------------------------------------------------------
def save(fig: Figure, path, dpi: int = 110) -> Path:
    """Writes the Figure through the Agg canvas (PNG by the file's suffix) -> the path.

    Creates the file's folder only when that folder's parent exists (a user names one new folder, never a
    chain); refuses a path that is a folder, a dpi outside 1..MAX_DPI and an image over MAX_PIXELS."""
    path = Path(path)
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not 1 <= dpi <= MAX_DPI:
        raise ValueError(f"dpi={dpi!r}: a number from 1 to {MAX_DPI}")
    width, height = fig.get_size_inches()
    pixels = width * dpi * height * dpi
    if pixels > MAX_PIXELS:
        raise ValueError(f"the figure would be {width * dpi:.0f} x {height * dpi:.0f} pixels at dpi={dpi}, more "
                         f"than {MAX_PIXELS:,}; use a lower dpi")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'figure.png'}")
    if not path.parent.is_dir():
        if not path.parent.parent.is_dir():
            raise FileNotFoundError(f"cannot make the folder {path.parent}: {path.parent.parent} does not exist; "
                                    "create it first (only the last folder of a path is created)")
        path.parent.mkdir()
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


__all__ = ["attention_pattern", "attention_grid", "layer_head_grid", "layer_head_grids", "patching_heatmap",
           "lens_table", "lens_comparison", "role_swap_figure", "dla_bars", "plot_result", "faithfulness_figure",
           "composition_heatmap", "circuit_graph", "position_labels", "save"]


# -- weight circuits ---------------------------------------------------------------------------------------------
def composition_heatmap(result, title: str | None = None) -> Figure:
    """Returns a Figure of a `minitx.circuits.CompositionScores`: rows are earlier heads L.H, columns later heads;
    pairs where the later head is not in a later layer are blank. Cells above the random baseline's mean + 3 std
    carry a dot; the colour bar marks the baseline mean (solid) and mean + 3 std (dashed)."""
    S = _array(result.scores, 4, "scores [earlier_layer, earlier_head, later_layer, later_head]")
    L, H = S.shape[:2]
    layer = np.repeat(np.arange(L), H)
    grid = np.where(layer[:, None] < layer[None, :], S.reshape(L * H, L * H), np.nan)
    threshold = result.baseline_mean + 3 * result.baseline_std
    finite = grid[np.isfinite(grid)]
    top = max(float(finite.max()) if finite.size else 0.0, threshold) * 1.05
    size = min(14.0, max(4.5, 0.3 * L * H + 2.5))
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap=SEQUENTIAL, norm=Normalize(vmin=0.0, vmax=top), interpolation="nearest")
    labels = [f"{l}.{h}" for l in range(L) for h in range(H)]
    ax.set_xticks(range(L * H), labels, fontsize=_font(L * H), rotation=90)
    ax.set_yticks(range(L * H), labels, fontsize=_font(L * H))
    ax.set_xlabel("later head (reads)")
    ax.set_ylabel("earlier head (writes, W_OV)")
    rows, cols = np.nonzero(np.nan_to_num(grid, nan=-1.0) > threshold)
    ax.scatter(cols, rows, s=max(4.0, 200.0 / (L * H)), color="#b2182b", marker="o")
    bar = fig.colorbar(image, ax=ax, shrink=0.85, label=f"{result.mode}-composition score")
    bar.ax.axhline(result.baseline_mean, color="black", linewidth=1.0)
    bar.ax.axhline(threshold, color="black", linewidth=1.0, linestyle="--")
    ax.set_title(_wrap(title or f"{result.mode}-composition; dots: above the random baseline's mean + 3 std "
                       f"({result.baseline_mean:.3f} + 3 x {result.baseline_std:.3f}, {result.n_samples} samples)",
                       size), fontsize=10)
    return fig


# -- circuits found by edge patching ----------------------------------------------------------------
NODE_FONT = 7.0  # points: node labels ("input", "logits", "mlp11", "11.11")
MARK_FONT = 7.0  # points: the q/k/v mark on an edge into a head
MARK_AT = 0.62  # where along an edge its q/k/v mark sits (0 writer, 1 reader): clear of both circles
KIND_BEND = {"q": -0.3, "k": 0.0, "v": 0.3}  # added to an edge's bend, so one writer's q, k and v edges part


def _node_xy(graph, writer: int) -> tuple[float, float]:
    """Where a component sits: layers as rows (input at the bottom, logits on top, both centred); heads across a
    row, each layer's MLP to the right of its heads and a little higher (it reads after them)."""
    if writer == 0:
        return ((graph.n_head - 1) / 2, -1.0)
    layer, offset = divmod(writer - 1, graph.n_head + 1)
    return (float(offset) + (0.5 if offset == graph.n_head else 0.0), layer + (0.35 if offset == graph.n_head else 0.0))


def _reader_xy(graph, reader_label: str) -> tuple[float, float]:
    if reader_label == "logits":
        return ((graph.n_head - 1) / 2, float(graph.n_layer))
    return _node_xy(graph, _reader_writer(graph, reader_label))


def _node_size(labels, room: float) -> tuple[float, float]:
    """(font size, circle diameter), points: the circle holds the longest label (its text box's diagonal) with a
    little room, at NODE_FONT or, where the rows or columns are closer than that circle (a 36-layer model), at a
    font small enough that neighbouring circles do not touch (room: points between node centres), 4 at least."""
    from matplotlib.textpath import TextPath

    def diameter(font: float) -> float:
        boxes = [TextPath((0, 0), label, size=font).get_extents() for label in labels]
        return max(math.hypot(box.width, max(box.height, 0.75 * font)) for box in boxes) + 4.0
    font = max(4.0, min(NODE_FONT, NODE_FONT * (0.85 * room - 4.0) / (diameter(NODE_FONT) - 4.0)))
    return font, diameter(font)


def _bend(start, end, centre_x: float, aspect: float) -> float:
    """arc3's rad for an edge: straight between neighbouring nodes, bowed (away from the nodes it would cross)
    when it skips a row or runs along one; a sideways bow leans towards the middle so it stays in the figure, a
    bow along a row dips below it. aspect = points per y unit / points per x unit."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    if abs(dy) <= 1.0 and abs(dx) <= 1.5:
        return 0.0
    normal_x, normal_y = dy * aspect, -dx / aspect  # the bow's direction for rad > 0, in data units
    if abs(dx) > abs(dy) * aspect:
        return 0.2 if normal_y < 0 else -0.2
    return 0.2 if (centre_x - (x0 + x1) / 2) * normal_x >= 0 else -0.2


def _inside(start, end, rad: float, aspect: float, x_range, y_range) -> float:
    """rad, or the first of -rad, rad/2, -rad/2, rad/4, -rad/4 whose curve stays inside the axes (a wide edge
    from the input bowed below its row would leave them); 0 (straight) if none does."""
    for r in (rad, -rad, rad / 2, -rad / 2, rad / 4, -rad / 4):
        points = [_on_arc(start, end, r, aspect, t) for t in np.linspace(0.0, 1.0, 11)]
        if all(x_range[0] + 0.1 <= x <= x_range[1] - 0.1 and y_range[0] + 0.1 <= y <= y_range[1] - 0.1
               for x, y in points):
            return r
    return 0.0


def _on_arc(start, end, rad: float, aspect: float, t: float) -> tuple[float, float]:
    """The point at t of matplotlib's arc3 curve from start to end (a quadratic Bezier whose control point is the
    chord's middle moved rad x the chord, turned a quarter, in display units), in data units."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0) * aspect, (y0 + y1) / 2 - rad * (x1 - x0) / aspect
    a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    return (a * x0 + b * cx + c * x1, a * y0 + b * cy + c * y1)


def circuit_graph(graph, scores, circuit, title: str = "circuit") -> Figure:
    """Returns a Figure of a circuit: graph (a minitx.engine.EdgeGraph), scores [n_edges] (edge scores, e.g.
    EdgeScores.scores), circuit bool [n_edges] (the edges kept). Layers are rows, nodes are the input, the
    heads (L.H), the MLPs and the logits; each kept edge is an arrow from writer to reader component, its width
    by |score| and its colour by sign (red positive, blue negative); the q, k or v on an edge into a head says
    which of the head's inputs it feeds. An edge's arrow and its mark share the gid "edge <index>"."""
    S, keep = _array(scores, 1, "scores [n_edges]"), _array(circuit, 1, "circuit [n_edges]").astype(bool)
    if S.shape[0] != len(graph.edges) or keep.shape[0] != len(graph.edges):
        raise ValueError(f"scores and circuit must have one entry per edge ({len(graph.edges)}), "
                         f"got {S.shape[0]} and {keep.shape[0]}")
    from matplotlib.patches import FancyArrowPatch
    width, height = min(16.0, max(5.0, 0.9 * (graph.n_head + 2))), min(14.0, max(4.0, 0.9 * graph.n_layer + 2.5))
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    x_range, y_range = (-1.0, graph.n_head + 1.2), (-1.6, graph.n_layer + 0.6)
    box = (height - 1.4) / (width - 1.2)  # the axes' height / width in inches, fixed so bends can be computed
    ax.set_box_aspect(box)
    aspect = box * (x_range[1] - x_range[0]) / (y_range[1] - y_range[0])
    room = 72 * min((width - 1.2) / (x_range[1] - x_range[0]), (height - 1.4) / (y_range[1] - y_range[0]))
    font, diameter = _node_size([*graph.writer_labels, "logits"], room)
    edges, centre_x = graph.edges.tolist(), (graph.n_head - 1) / 2
    biggest = max((abs(S[e]) for e in range(len(S)) if keep[e]), default=1.0) or 1.0
    used = {0}
    for e in np.nonzero(keep)[0]:
        w, r = edges[e]
        label = graph.reader_labels[r]
        start, end = _node_xy(graph, w), _reader_xy(graph, label)
        used |= {w} | ({_reader_writer(graph, label)} if label != "logits" else set())
        kind = label.rsplit(".", 1)[1] if label.count(".") == 2 else ""
        rad = _bend(start, end, centre_x, aspect) + KIND_BEND.get(kind, 0.0)  # q, k, v from one writer: apart
        rad = _inside(start, end, rad, aspect, x_range, y_range)
        color = "tab:red" if S[e] > 0 else "tab:blue"
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, color=color, alpha=0.75,
                                     lw=0.6 + 4.4 * abs(S[e]) / biggest, shrinkA=diameter / 2 + 1,
                                     shrinkB=diameter / 2 + 1, connectionstyle=f"arc3,rad={rad}", gid=f"edge {e}"))
        if kind:  # which input of the reader head, on the arrow itself
            ax.text(*_on_arc(start, end, rad, aspect, MARK_AT), kind, fontsize=min(font, MARK_FONT),
                    color=color, ha="center", va="center", zorder=2.5, gid=f"edge {e}",
                    bbox=dict(boxstyle="round,pad=0.08", facecolor="white", edgecolor="none", alpha=0.85))
    nodes = [(*_node_xy(graph, w), graph.writer_labels[w], w in used) for w in range(graph.n_writers)]
    for x, y, name, on in [*nodes, (*_reader_xy(graph, "logits"), "logits", True)]:
        ax.scatter([x], [y], s=diameter ** 2 if on else 40, color="white", zorder=3,
                   edgecolors="black" if on else "lightgray")
        if on:
            ax.text(x, y, name, ha="center", va="center", fontsize=font, zorder=4)
    ax.set_yticks(range(-1, graph.n_layer + 1), ["input", *[f"layer {l}" for l in range(graph.n_layer)], "logits"])
    ax.set_xticks([])
    ax.set_xlim(*x_range)
    ax.set_ylim(*y_range)
    ax.set_title(_wrap(f"{title} ({int(keep.sum())} edges; width |score|, red +, blue -; q/k/v: the head's input)",
                       width - 0.5), fontsize=10)
    return fig


def _reader_writer(graph, reader_label: str) -> int:
    """The writer index of the component a reader ("L.H.q", "mlpL") belongs to."""
    if reader_label.startswith("mlp"):
        return graph.writer("mlp", int(reader_label[3:]))
    layer, head, _ = reader_label.split(".")
    return graph.writer("head", int(layer), int(head))
