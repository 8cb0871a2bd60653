"""minitx.plots: every figure function builds a Figure that saves as a valid PNG, headless, no pyplot state."""

import ast
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from minitx import heads, lens, plots
from tests.conftest import random_model

PACKAGE = Path(__file__).resolve().parent.parent / "minitx"


@pytest.fixture(scope="module")
def model():
    return random_model(n_layer=2, n_head=3, n_embd=24, vocab_size=40, n_positions=16)


def check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50 and image.shape[2] in (3, 4)
    assert float(image[..., :3].std()) > 0  # not a blank canvas


def save_and_check(fig, tmp_path: Path, name: str) -> None:
    assert isinstance(fig, Figure)
    check_png(plots.save(fig, tmp_path / "sub" / name))  # parent folders are created


def test_attention_pattern_and_grid(model, tmp_path):
    tokens = torch.tensor([[39, 3, 7, 3, 7, 12]])
    labels = ["BOS", "3", "7", "3", "7", "12\n"]
    patterns = heads.attention_patterns(model, tokens)  # [layer, batch, head, q, k]
    fig = plots.attention_pattern(patterns[1, 0, 2], labels, "head 1.2")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["BOS", "3", "7"]
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "12\\n"  # a newline is shown, not printed
    save_and_check(fig, tmp_path, "pattern.png")
    grid = plots.attention_grid(patterns[0, 0], labels, layer=0)
    assert sum(1 for a in grid.axes if a.images) == 3  # one panel per head
    save_and_check(grid, tmp_path, "grid.png")
    with pytest.raises(ValueError, match="token labels"):
        plots.attention_pattern(patterns[1, 0, 2], labels[:-1])


def test_layer_head_grid_is_centred_and_annotated(tmp_path):
    scores = torch.tensor([[0.5, -2.0, 0.1], [1.0, 0.0, -0.3]])
    fig = plots.layer_head_grid(scores, "signed scores")
    norm = fig.axes[0].images[0].norm
    assert isinstance(norm, TwoSlopeNorm) and norm.vcenter == 0 and norm.vmin == -norm.vmax == -2.0
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"0.50", "-2.00", "0.00", "-0.30"} <= texts
    save_and_check(fig, tmp_path, "grid.png")
    seq = plots.layer_head_grid(scores.abs(), "magnitudes", diverging=False)
    assert not isinstance(seq.axes[0].images[0].norm, TwoSlopeNorm)
    save_and_check(seq, tmp_path, "seq.png")
    big = plots.layer_head_grid(torch.randn(12, 20), "large grid")  # too many cells to annotate
    assert not big.axes[0].texts
    save_and_check(big, tmp_path, "big.png")
    save_and_check(plots.layer_head_grids({"a": scores.abs(), "b": scores.abs() / 2}, "two"), tmp_path, "two.png")


def test_patching_heatmap(tmp_path):
    scores = torch.tensor([[0.0, 0.2, 1.0, -0.1], [0.0, 0.0, 0.9, 0.05]])
    fig = plots.patching_heatmap(scores, ["BOS", " The", " cat", " sat"], "denoising resid_pre")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["BOS", " The", " cat", " sat"]
    save_and_check(fig, tmp_path, "patch.png")
    rows = plots.patching_heatmap(torch.rand(6, 4), list("abcd"), "heads", row_labels=[f"{l}.{h}" for l in range(2)
                                                                                     for h in range(3)])
    save_and_check(rows, tmp_path, "rows.png")


def test_lens_table(model, tmp_path):
    tokens = torch.tensor([[39, 5, 6, 7, 5, 6]])
    labels = ["BOS", "5", "6", "7", "5", "6"]
    with_target = lens.logit_lens(model, tokens, targets=torch.tensor(7))
    fig = plots.lens_table(with_target, labels, tokenizer=lambda i: f"t{i}")
    ax = fig.axes[0]
    n_rows, n_pos = len(with_target.labels), tokens.shape[1]
    assert len(ax.texts) == n_rows * n_pos  # the top token in every cell
    top = int(with_target.top_tokens[-1, 0, 0, 0])
    assert f"t{top}" in {t.get_text() for t in ax.texts}
    assert [t.get_text() for t in ax.get_yticklabels()] == with_target.labels
    save_and_check(fig, tmp_path, "lens-target.png")
    some = lens.logit_lens(model, tokens, positions=[-2, -1])  # no target: colour = p(top-1)
    save_and_check(plots.lens_table(some, labels), tmp_path, "lens-top.png")
    with pytest.raises(ValueError, match="targets"):
        plots.lens_table(some, labels, color_by="target")


def test_role_swap_figure(model, tmp_path):
    a = torch.tensor([[39, 1, 2, 3, 4, 5]])
    b = torch.tensor([[39, 4, 2, 3, 1, 5]])
    result = heads.role_swap(model, a, b, (1, 4))
    fig = plots.role_swap_figure(result)
    assert sum(1 for ax in fig.axes if ax.images) == 3
    save_and_check(fig, tmp_path, "role-swap.png")


def test_headless_without_pyplot():
    if "matplotlib.pyplot" in sys.modules:  # imported by something else: then no figure may be left open
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []
    tree = ast.parse((PACKAGE / "plots.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    assert not any("pyplot" in name or name == "pylab" for name in imported)


def test_only_plots_imports_matplotlib():
    for path in PACKAGE.glob("*.py"):
        if path.name == "plots.py":
            continue
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        assert not any(n.split(".")[0] == "matplotlib" for n in names), f"{path.name} imports matplotlib"


# -- what a reader sees: nothing cut off, titles that say what and on which prompt, colour bars that name ---------
def outside_canvas(fig) -> list[str]:
    """Texts (tick labels, axis labels, titles, colour-bar labels) that reach beyond the saved canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    W, H = fig.bbox.width, fig.bbox.height
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            texts += [tick.label1 for tick in axis.get_major_ticks() if low - 1e-9 <= tick.get_loc() <= high + 1e-9]
            texts.append(axis.label)
        texts.append(ax.title)
    bad = []
    for text in texts:
        if text.get_text() and text.get_visible():
            box = text.get_window_extent(renderer)
            if box.x0 < -1 or box.y0 < -1 or box.x1 > W + 1 or box.y1 > H + 1:
                bad.append(text.get_text())
    return bad


LONG = [f" token{i}-with-a-long-name" for i in range(30)]


@pytest.mark.parametrize("kind", ["pattern", "grid", "layer_head", "grids", "patching", "patching-rows", "role",
                                  "dla"])
def test_no_label_is_cut_off(model, kind):
    tokens = torch.randint(0, 39, (1, 14))
    labels = LONG[:14]
    patterns = heads.attention_patterns(model, tokens)
    prompt = "The cat sat on the mat because it was a very long and winding afternoon"
    if kind == "pattern":
        fig = plots.attention_pattern(patterns[0, 0, 0], labels, f"head 0.0 on {prompt!r}")
    elif kind == "grid":
        fig = plots.attention_grid(patterns[1, 0], labels, 1, f"layer 1 on {prompt!r}")
    elif kind == "layer_head":
        fig = plots.layer_head_grid(torch.randn(12, 12), f"path patching on {prompt!r}", colorbar_label="removed")
    elif kind == "grids":
        fig = plots.layer_head_grids({"prev-token": torch.rand(6, 4), "induction": torch.rand(6, 4)}, prompt)
    elif kind == "patching":
        fig = plots.patching_heatmap(torch.randn(6, 14), labels, f"denoising resid_pre on {prompt!r}")
    elif kind == "patching-rows":
        fig = plots.patching_heatmap(torch.randn(6, 14), labels, prompt, row_labels=[f"{l}.{h}" for l in range(2)
                                                                                     for h in range(3)], ylabel="head")
    elif kind == "role":
        fig = plots.role_swap_figure(heads.role_swap(model, tokens, tokens, (1, 1)), f"role swap on {prompt!r}")
    else:
        from minitx import dla
        fig = plots.dla_bars(dla.direct_logit_attribution(model, tokens, 3), f"DLA on {prompt!r}")
    assert outside_canvas(fig) == []
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert kind == "dla" or bars, kind
    assert all(bar.get_ylabel() for bar in bars), [bar.get_ylabel() for bar in bars]  # every colour bar names
    title = (fig._suptitle.get_text() if fig._suptitle is not None else fig.axes[0].get_title()).replace("\n", " ")
    assert "The cat sat on the mat" in title, title  # the prompt in the title


def test_patching_map_fixed_scale_values_and_both_prompts():
    scores = torch.tensor([[0.1, 0.2, 0.05], [0.0, 0.3, -0.02]])  # small values keep the [-1, 1] scale
    fig = plots.patching_heatmap(scores, ["BOS", " cat", " sat"], "denoising on 'The cat sat'",
                                 corrupted_tokens=["BOS", " dog", " sat"])
    ax = fig.axes[0]
    norm = ax.images[0].norm
    assert norm.vmin == -1.0 and norm.vmax == 1.0 and norm.vcenter == 0.0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["BOS", " cat/ dog", " sat"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" if v else "0.00"
                                                            for v in scores.flatten().tolist())
    assert fig.axes[1].get_ylabel() == "score (1 clean, 0 corrupted)"
    big = plots.patching_heatmap(torch.rand(12, 40), [str(i) for i in range(40)], "big")
    assert len(big.axes[0].texts) == 480  # every cell of a 12-layer, 40-token map is written in


def test_plot_result_by_axes(model):
    from minitx import dla, metrics, patching
    clean = torch.tensor([[39, 5, 6, 7, 5]])
    corrupted = torch.tensor([[39, 5, 8, 7, 5]])
    metric = metrics.logit_diff_metric(6, 8)
    labels = ["BOS", "5", "6", "7", "5"]
    resid = patching.activation_patching(model, clean, corrupted, metric, "resid_pre", "pos")
    fig = plots.plot_result(resid, labels, "resid", corrupted_tokens=["BOS", "5", "8", "7", "5"])
    assert fig.axes[0].get_xticklabels()[2].get_text() == "6/8"
    z = patching.activation_patching(model, clean, corrupted, metric, "z", "all")
    assert fig.axes and plots.plot_result(z).axes[0].get_xlabel() == "head"
    by_pos = patching.activation_patching(model, clean, corrupted, metric, "z", "pos")
    assert len(plots.plot_result(by_pos, labels).axes[0].get_yticklabels()) == 2 * 3
    assert plots.plot_result(dla.direct_logit_attribution(model, clean, 3)).axes[0].get_ylabel() == "component"
    assert len([a for a in plots.plot_result(heads.role_swap(model, clean, clean, (1, 1))).axes if a.images]) == 3
    with pytest.raises(ValueError, match="str_tokens"):
        plots.plot_result(resid)


def test_save_bounds_and_folders(tmp_path, monkeypatch):
    fig = plots.layer_head_grid(torch.zeros(2, 2), "zeros")
    with pytest.raises(ValueError, match="dpi=10000: a number from 1 to 600"):
        plots.save(fig, tmp_path / "x.png", dpi=10000)
    with pytest.raises(ValueError, match="dpi"):
        plots.save(fig, tmp_path / "x.png", dpi=float("nan"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plots.save(fig, tmp_path / "a" / "b" / "x.png")
    assert not (tmp_path / "a").exists()  # no chain of folders is created
    with pytest.raises(IsADirectoryError, match="is a folder"):
        plots.save(fig, tmp_path)
    assert plots.save(fig, tmp_path / "new" / "x.png").is_file()  # one named folder is
    with pytest.raises(ValueError, match="at least one head"):
        plots.attention_grid(torch.zeros(0, 3, 3), ["a", "b", "c"], 0)


def test_plot_result_for_circuits_and_discovery(model):
    from minitx import circuits, discovery, metrics
    clean = torch.tensor([[39, 5, 6, 7, 5], [39, 8, 9, 10, 8]])
    corrupted = torch.tensor([[39, 5, 11, 7, 5], [39, 8, 12, 10, 8]])
    metric = metrics.logit_diff_metric(6, 11)
    scores = discovery.eap(model, clean, corrupted, metric)
    graph = plots.plot_result(scores, title="EAP edges on the pair")
    assert graph.axes and "EAP edges" in graph.axes[0].get_title()
    curve = discovery.faithfulness_curve(model, clean, scores, metric, [1, 5, 20], ablation="resample",
                                         corrupted=corrupted)
    fig = plots.plot_result(curve, title="faithfulness on the pair")
    assert fig.axes[0].get_ylabel() == "faithfulness (resample ablation)" and len(fig.axes[0].lines) >= 2
    assert outside_canvas(fig) == []
    composition = circuits.all_composition_scores(model, "K", n_samples=10)
    assert plots.plot_result(composition).axes


# -- the circuit figure: every label readable, each q/k/v mark on its own arrow -----------------------------------
def drawn_circuit_graph(n_layer: int, n_head: int, seed: int):
    """circuit_graph of EdgeGraph(n_layer, n_head) with every edge kept and random signed scores, drawn once."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from minitx.engine import EdgeGraph
    graph = EdgeGraph(n_layer, n_head)
    scores = np.random.default_rng(seed).normal(size=len(graph.edges))
    fig = plots.circuit_graph(graph, scores, np.ones(len(graph.edges), dtype=bool), "circuit on 'The cat sat'")
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    return graph, fig, renderer


def distance_to_path(point, path) -> float:
    """Display units from a point to a path drawn as line segments (curves flattened)."""
    import numpy as np
    best = np.inf
    for polygon in path.to_polygons(closed_only=False):
        a, b = polygon[:-1], polygon[1:]
        ab = b - a
        t = np.clip(((point - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
        best = min(best, float(np.hypot(*(a + t[:, None] * ab - point).T).min()))
    return best


@pytest.mark.parametrize("n_layer, n_head", [(2, 2), (6, 4), (1, 1), (2, 12)])
def test_circuit_graph_labels_inside_and_marks_on_their_edges(n_layer, n_head):
    """Issue 16's trial: 'input' was clipped, 'logits' overflowed its circle, q/k/v marks floated off their edges.
    Every text lies inside the figure (and node labels and marks inside the axes); each node label fits inside its
    circle; each q/k/v mark's centre lies on the arrow of the same edge (gid "edge <index>"); every arrow stays inside
    the axes (2 x 12: edges from the input to the row above run nearly flat, and bowed below it they left)."""
    import numpy as np
    from matplotlib.collections import PathCollection
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.text import Text
    graph, fig, renderer = drawn_circuit_graph(n_layer, n_head, seed=n_layer * 10 + n_head)
    ax = fig.axes[0]
    assert outside_canvas(fig) == []
    for text in fig.findobj(Text):
        if text.get_text() and text.get_visible():
            box = text.get_window_extent(renderer)
            assert fig.bbox.x0 - 0.5 <= box.x0 and box.x1 <= fig.bbox.x1 + 0.5, text.get_text()
            assert fig.bbox.y0 - 0.5 <= box.y0 and box.y1 <= fig.bbox.y1 + 0.5, text.get_text()
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        assert ax.bbox.x0 <= box.x0 and box.x1 <= ax.bbox.x1 and ax.bbox.y0 <= box.y0 and box.y1 <= ax.bbox.y1, \
            text.get_text()
    circles = {tuple(np.round(c.get_offsets()[0], 6)): float(np.sqrt(c.get_sizes()[0])) * fig.dpi / 72
               for c in ax.collections if isinstance(c, PathCollection)}
    nodes = [t for t in ax.texts if t.get_gid() is None]
    assert sorted(t.get_text() for t in nodes) == sorted([*graph.writer_labels, "logits"])  # all edges kept
    for text in nodes:
        box = text.get_window_extent(renderer)
        diameter = circles[tuple(np.round(text.get_position(), 6))]
        assert np.hypot(box.width, box.height) <= diameter, (text.get_text(), box.width, box.height, diameter)
    arrows = {p.get_gid(): p for p in ax.patches if isinstance(p, FancyArrowPatch)}
    marks = [t for t in ax.texts if t.get_gid() is not None]
    assert len(arrows) == len(graph.edges) and len(marks) == sum(label.count(".") == 2 for _, r in
                                                                   graph.edges.tolist()
                                                                   for label in [graph.reader_labels[r]])
    for arrow in arrows.values():
        corners = arrow.get_transform().transform_path(arrow.get_path()).get_extents()
        assert ax.bbox.x0 <= corners.x0 and corners.x1 <= ax.bbox.x1, arrow.get_gid()
        assert ax.bbox.y0 <= corners.y0 and corners.y1 <= ax.bbox.y1, arrow.get_gid()
    for mark in marks:
        assert mark.get_text() in "qkv"
        centre = np.asarray(ax.transData.transform(mark.get_position()))
        arrow = arrows[mark.get_gid()]
        path = arrow.get_transform().transform_path(arrow.get_path())
        assert distance_to_path(centre, path) <= 1.5, (mark.get_gid(), distance_to_path(centre, path))
