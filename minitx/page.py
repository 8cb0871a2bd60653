"""How minitx writes a self-contained HTML page: the data as compact JSON, the style, and viewer.js inlined.

No network, no outside script, style or font: the file opens from disk in any browser. Attention patterns
are quantised to uint16 (step 1/65535, at most 7.7e-6 from the model's value), only their causal lower
triangle, in base64; lens probabilities and scores are rounded to 4 decimals (the page shows 3). The
JavaScript that draws the page is minitx/viewer.js, shipped with the package (no build step).

`minitx.viewer` computes what a page shows from a model (`minitx.view`); this module only writes it, so
`Result._repr_html_` (any analysis result in a notebook: its scores as a heatmap) imports nothing that
imports results.
"""

from __future__ import annotations

import base64
import html
import json
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["View", "html_page", "fragment", "result_html", "encode_patterns", "decode_patterns", "result_payload",
           "edge_payload", "QUANT", "DECIMALS", "MAX_EDGES"]

QUANT = 65535  # attention weights are stored as round(p * QUANT) in uint16
DECIMALS = 4  # lens probabilities and patching values are stored rounded to this many decimals


@dataclass
class View:
    """A rendered page: `html` is the whole file; `save(path)` writes it; notebooks show it inline."""

    html: str
    data: dict

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return fragment(self.data)


def encode_patterns(patterns: Tensor) -> str:
    """[layer, head, pos, pos] -> base64 of uint16 little-endian, the lower triangle of each (layer, head)
    in row order (q, k <= q)."""
    patterns, T = patterns.detach().float().cpu(), patterns.shape[-1]
    q, k = torch.tril_indices(T, T)
    values = (patterns[..., q, k].clamp(0, 1) * QUANT).round().to(torch.int32).numpy().astype("<u2")
    return base64.b64encode(values.tobytes()).decode("ascii")


def decode_patterns(encoded: str, n_layer: int, n_head: int, n_pos: int) -> Tensor:
    """The inverse of the page's encoding -> [layer, head, pos, pos] float (zeros above the diagonal)."""
    values = np.frombuffer(base64.b64decode(encoded), dtype="<u2").astype(np.float64) / QUANT
    q, k = torch.tril_indices(n_pos, n_pos)
    out = torch.zeros(n_layer, n_head, n_pos, n_pos, dtype=torch.float64)
    out[..., q, k] = torch.from_numpy(values.reshape(n_layer, n_head, -1).copy())
    return out


def _round(x: Tensor) -> list:
    """Floats rounded for the page; NaN (a sender with no path) becomes null."""
    values = x.double().round(decimals=DECIMALS)
    return [None if v != v else v for v in values.reshape(-1).tolist()]


MAX_EDGES = 500  # a circuit view embeds the edges of largest |score| (GPT-2 small has 32,491)


def edge_payload(result, title: str, pair: dict | None) -> dict:
    """Edge scores over an EdgeGraph (discovery.EdgeScores) -> the circuit view: the MAX_EDGES edges of largest
    |score| as [writer label, reader label, score], largest first."""
    graph, scores = result.graph, result.scores.detach().cpu().double()
    order = scores.abs().argsort(descending=True)[:MAX_EDGES].tolist()
    edges = [[graph.writer_labels[w], graph.reader_labels[r], round(float(scores[e]), DECIMALS)]
             for e in order for w, r in [graph.edges[e].tolist()]]
    return {"title": title, "kind": type(result).__name__, "view": "circuit", "metric": result.metric,
            "method": getattr(result, "method", None), "n_layer": graph.n_layer, "n_head": graph.n_head,
            "n_edges": graph.n_edges, "edges": edges, "clean": result.clean, "corrupted": result.corrupted,
            "pair": pair}


def result_payload(result, title: str, pos_labels: list[str] | None, pair: dict | None) -> dict:
    """A Result's scores as heatmaps: 2-D as one, 1-D as one column, 3-D as one per index of the last axis;
    scores over the edges of a graph (circuit discovery) as the circuit view."""
    if hasattr(getattr(result, "graph", None), "writer_labels") and tuple(result.axes) == ("edge",):
        return edge_payload(result, title, pair)
    axes = list(result.axes) or [f"axis {i}" for i in range(result.scores.dim())] or ["value"]
    raw = result.raw if result.raw is not None and result.raw.shape == result.scores.shape else None

    def slices(x: Tensor) -> list[Tensor]:  # a 0-d or 1-d score is one column; axes after the third are merged
        x = x.detach().cpu()
        x = x.reshape(-1, 1) if x.dim() < 2 else x.reshape(*x.shape[:2], -1) if x.dim() > 3 else x
        return [x] if x.dim() == 2 else [x[..., i] for i in range(x.shape[-1])]

    def labels(axis: str, n: int) -> list[str]:
        if axis == "pos" and pos_labels is not None and len(pos_labels) == n:
            return [f"{i}: {t}" for i, t in enumerate(pos_labels)]
        return [str(i) for i in range(n)]

    scores = slices(result.scores)
    cols_axis = axes[1] if len(axes) > 1 else ""
    return {"title": title, "metric": result.metric, "axes": [axes[0], cols_axis],
            "slice_axis": " x ".join(axes[2:]) if len(axes) > 2 else None,
            "rows": labels(axes[0], scores[0].shape[0]),
            "cols": labels(cols_axis, scores[0].shape[1]) if cols_axis else ["all"],
            "values": [_round(s) for s in scores], "raw": None if raw is None else [_round(s) for s in slices(raw)],
            "clean": result.clean, "corrupted": result.corrupted, "kind": type(result).__name__,
            "direction": getattr(result, "direction", None), "point": getattr(result, "point", None),
            "pair": pair}


def result_html(result) -> str:
    """The HTML fragment a notebook shows for a Result: its scores as a heatmap (a LensResult: its table)."""
    if getattr(result, "top_tokens", None) is not None:  # a lens.LensResult
        return fragment(_lens_result_data(result))
    return fragment({"title": type(result).__name__, "model": "", "prompts": [], "words": {}, "bos": None,
                      "results": [result_payload(result, type(result).__name__, None, None)]})


def _lens_result_data(result) -> dict:
    """A LensResult on its own (first prompt): top-k per cell; positions labelled by index."""
    words = {}
    decode = _decoder(result.logits.shape[-1])
    top = result.top_tokens[:, 0]
    for token_id in top.unique().tolist():
        words[str(token_id)] = decode(token_id)
    lens = {"kind": result.lens, "labels": result.labels, "ids": top.tolist(),
            "probs": result.top_probs[:, 0].round(decimals=DECIMALS).tolist()}
    prompt = {"tokens": [f"pos {int(p)}" for p in result.positions], "lens": lens}
    return {"title": f"{result.lens} lens", "model": "", "prompts": [prompt], "words": words, "bos": None,
            "results": [], "top_k": top.shape[-1]}


def _decoder(d_vocab: int):
    from minitx.prompts import GPT2_VOCAB
    if d_vocab == GPT2_VOCAB:
        from minitx.tokenizer import Tokenizer
        return lambda i: Tokenizer.default().decode([i])
    return str


# -- the HTML -----------------------------------------------------------------------------------------
STYLE = """
.mtx{font:13px system-ui,sans-serif;color:#222;max-width:1400px}
.mtx h2{font-size:16px;margin:18px 0 4px}.mtx h3{font-size:14px;margin:10px 0 4px}
.mtx .meta{color:#555;margin:2px 0 8px}.mtx select{margin-right:10px}
.mtx .tok{display:inline-block;padding:2px 3px;margin:1px;border:1px solid #ddd;border-radius:3px;cursor:default;
 white-space:pre;font-family:ui-monospace,monospace}
.mtx .tok.on{outline:2px solid #d62728}
.mtx table{border-collapse:collapse}.mtx td,.mtx th{border:1px solid #e4e4e4;padding:1px 3px;font-size:11px;
 white-space:pre;text-align:center}.mtx th{background:#f6f6f6;font-weight:600}
.mtx .grid{display:grid;gap:6px}.mtx .grid figure{margin:0;text-align:center;font-size:11px}
.mtx canvas{image-rendering:pixelated;border:1px solid #ccc;cursor:crosshair}
.mtx canvas.sel{border-color:#d62728}
.mtx .tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #888;border-radius:4px;
 padding:4px 6px;font-size:12px;white-space:pre;box-shadow:0 1px 4px #0003;display:none;z-index:10}
.mtx .scroll{overflow-x:auto;max-width:100%}
"""


def _script() -> str:
    return (resources.files("minitx") / "viewer.js").read_text(encoding="utf-8")


def _json(data: dict) -> str:
    # Inside <script>, "</" would end the element: escape it (and <!-- ) so any token text is safe.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def fragment(data: dict) -> str:
    """A <div> and its scripts, for a notebook cell; several can share one page (each has its own id)."""
    key = "mtx" + secrets.token_hex(4)
    return (f'<div class="mtx" id="{key}"></div>\n<style>{STYLE}</style>\n'
            f'<script type="application/json" id="{key}-data">{_json(data)}</script>\n'
            f"<script>{_script()}\nminitxView(document.getElementById({json.dumps(key)}), "
            f"JSON.parse(document.getElementById({json.dumps(key + '-data')}).textContent));</script>")


def html_page(data: dict) -> str:
    """The whole self-contained file."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(data.get('title', 'minitx view'))}</title></head>\n<body>\n"
            f"{fragment(data)}\n</body></html>\n")
