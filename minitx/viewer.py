"""One self-contained HTML page to look inside a model: attention, the logit lens and patching results.

    page = minitx.view(model, ["The cat sat on the"], prepend_bos=True, model_name="english-6l")
    page.save("view.html")          # opens from disk in any browser: no network, no outside script or font
    page                            # in Jupyter / VS Code: shown inline (_repr_html_)
    result                          # any analysis Result in a notebook: its scores as a heatmap

The page holds, for every prompt, each layer x head attention pattern (a grid of small heatmaps, one
large one, and a token view: hover a token to see every head's attention from and to it), the logit-
lens table (docs/methods.md §4.1; layers x positions, top-1 token per cell, top-k on hover), and any
patching or path-patching results given, as heatmaps with the value, prompt pair and metric on hover.
Every view names the model, the prompt(s), BOS or not, and the metric.

The module is `viewer`, not `view`, so that importing it never hides the function `minitx.view`.
The data is embedded once as JSON; attention patterns are quantised to uint16 (step 1/65535, at most
7.7e-6 from the model's value), only their causal lower triangle, in base64. The page's JavaScript is
minitx/viewer.js, shipped with the package and inlined into every page (no build step).
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

from minitx.heads import attention_patterns
from minitx.lens import LensResult, logit_lens
from minitx.results import Result

__all__ = ["View", "view", "result_html", "decode_patterns", "QUANT"]

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
        return _fragment(self.data)


def _quantised(patterns: Tensor) -> str:
    """[layer, head, pos, pos] -> base64 of uint16 little-endian, the lower triangle of each (layer, head)
    in row order (q, k <= q)."""
    T = patterns.shape[-1]
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


def _vocab_for(model, vocab):
    if vocab is not None:
        return vocab
    from minitx.prompts import Vocab
    return Vocab(model.cfg)


def _as_tokens(prompt, vocab, prepend_bos: bool) -> Tensor:
    if isinstance(prompt, Tensor):
        return prompt.reshape(1, -1)
    return vocab.tokens(prompt, prepend_bos=prepend_bos)


def _lens_payload(model, tokens: Tensor, vocab, top_k: int, words: dict) -> dict:
    """The logit lens of one prompt: labels, and per (layer, pos) the top-k ids and probabilities."""
    result = logit_lens(model, tokens, top_k=top_k)
    top = result.top_tokens[:, 0]  # [layer+1, pos, k]
    for token_id in top.unique().tolist():
        words.setdefault(str(token_id), vocab.decode(token_id))
    return {"labels": result.labels, "ids": top.tolist(),
            "probs": result.top_probs[:, 0].round(decimals=DECIMALS).tolist()}


def _prompt_payload(model, tokens: Tensor, vocab, top_k: int, words: dict, lens: bool) -> dict:
    with torch.no_grad():
        patterns = attention_patterns(model, tokens)[:, 0].float()  # [layer, head, q, k]
    entry = {"tokens": vocab.str_tokens(tokens[0]), "ids": tokens[0].tolist(), "attn": _quantised(patterns)}
    if lens:
        entry["lens"] = _lens_payload(model, tokens, vocab, top_k, words)
    return entry


def _round(x: Tensor) -> list:
    """Floats rounded for the page; NaN (a sender with no path) becomes null."""
    values = x.double().round(decimals=DECIMALS)
    return [None if v != v else v for v in values.reshape(-1).tolist()]


def _result_payload(result: Result, title: str, pos_labels: list[str] | None, pair: dict | None) -> dict:
    """A Result's scores as heatmaps: 2-D as one, 1-D as one column, 3-D as one per index of the last axis."""
    axes = list(result.axes) or [f"axis {i}" for i in range(result.scores.dim())]
    raw = result.raw if result.raw is not None and result.raw.shape == result.scores.shape else None

    def slices(x: Tensor) -> list[Tensor]:
        x = x.detach().cpu()
        x = x[:, None] if x.dim() == 1 else x
        return [x] if x.dim() == 2 else [x[..., i] for i in range(x.shape[-1])]

    def labels(axis: str, n: int) -> list[str]:
        if axis == "pos" and pos_labels is not None and len(pos_labels) == n:
            return [f"{i}: {t}" for i, t in enumerate(pos_labels)]
        return [str(i) for i in range(n)]

    scores = slices(result.scores)
    cols_axis = axes[1] if len(axes) > 1 else ""
    return {"title": title, "metric": result.metric, "axes": [axes[0], cols_axis],
            "slice_axis": axes[2] if len(axes) > 2 else None,
            "rows": labels(axes[0], scores[0].shape[0]),
            "cols": labels(cols_axis, scores[0].shape[1]) if cols_axis else ["all"],
            "values": [_round(s) for s in scores], "raw": None if raw is None else [_round(s) for s in slices(raw)],
            "clean": result.clean, "corrupted": result.corrupted, "kind": type(result).__name__,
            "direction": getattr(result, "direction", None), "point": getattr(result, "point", None),
            "pair": pair}


def view(model, prompts, *, prepend_bos: bool, model_name: str = "", vocab=None, results=(), pair=None,
         top_k: int = 5, lens: bool = True, title: str = "minitx view") -> View:
    """Returns View: the page for `prompts` (a str, a list of str, or token ids [batch, pos] / [pos]).

    prepend_bos: said on the page; applied to text prompts (token tensors are used as given).
    vocab: a minitx.prompts.Vocab (default: GPT-2's tokenizer for a 50257-id model, else integer ids).
    results: Result objects (patching, path patching, ...) to show as heatmaps; `pair` = (clean, corrupted)
    prompts or tokens they were computed on, shown on hover and used to label positions.
    top_k: tokens listed on hover of a logit-lens cell. lens=False leaves the lens table out.
    """
    vocab = _vocab_for(model, vocab)
    if isinstance(prompts, (str, Tensor)):
        prompts = [prompts] if isinstance(prompts, str) or prompts.dim() == 1 else list(prompts)
    words: dict[str, str] = {}
    entries = [_prompt_payload(model, _as_tokens(p, vocab, prepend_bos), vocab, top_k, words, lens) for p in prompts]
    pair_data, pos_labels = None, None
    if pair is not None:
        clean, corrupted = (_as_tokens(p, vocab, prepend_bos) for p in pair)
        pair_data = {"clean": vocab.str_tokens(clean[0]), "corrupted": vocab.str_tokens(corrupted[0])}
        pos_labels = [a if a == b else f"{a}/{b}" for a, b in zip(pair_data["clean"], pair_data["corrupted"])]
    panels = [_result_payload(r, f"{getattr(r, 'direction', '') or ''} {getattr(r, 'point', '') or type(r).__name__}"
                              .strip(), pos_labels, pair_data) for r in results]
    cfg = model.cfg
    data = {"title": title, "model": model_name or f"{cfg.n_layer}-layer GPT-2 ({cfg.n_head} heads)",
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "bos": bool(prepend_bos), "quant": QUANT,
            "prompts": entries, "words": words, "results": panels, "top_k": top_k}
    return View(html=page(data), data=data)


def result_html(result: Result) -> str:
    """The HTML fragment a notebook shows for a Result: its scores as a heatmap (a LensResult: its table)."""
    if isinstance(result, LensResult):
        return _fragment(_lens_result_data(result))
    return _fragment({"title": type(result).__name__, "model": "", "prompts": [], "words": {}, "bos": None,
                      "results": [_result_payload(result, type(result).__name__, None, None)]})


def _lens_result_data(result: LensResult) -> dict:
    """A LensResult on its own (first prompt): top-k per cell; positions labelled by index."""
    words = {}
    decode = _decoder(result.logits.shape[-1])
    top = result.top_tokens[:, 0]
    for token_id in top.unique().tolist():
        words[str(token_id)] = decode(token_id)
    lens = {"labels": result.labels, "ids": top.tolist(), "probs": result.top_probs[:, 0].round(decimals=DECIMALS).tolist()}
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


def _fragment(data: dict) -> str:
    """A <div> and its scripts, for a notebook cell; several can share one page (each has its own id)."""
    key = "mtx" + secrets.token_hex(4)
    return (f'<div class="mtx" id="{key}"></div>\n<style>{STYLE}</style>\n'
            f'<script type="application/json" id="{key}-data">{_json(data)}</script>\n'
            f"<script>{_script()}\nminitxView(document.getElementById({json.dumps(key)}), "
            f"JSON.parse(document.getElementById({json.dumps(key + '-data')}).textContent));</script>")


def page(data: dict) -> str:
    """The whole self-contained file."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(data.get('title', 'minitx view'))}</title></head>\n<body>\n"
            f"{_fragment(data)}\n</body></html>\n")
