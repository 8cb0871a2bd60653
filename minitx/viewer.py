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
This module computes what the page shows; minitx/page.py writes it (compact JSON, viewer.js inlined).
"""

from __future__ import annotations

import torch
from torch import Tensor

from minitx.heads import attention_patterns, repeated_tokens
from minitx.lens import Lens, LogitLens, read_lens
from minitx.page import DECIMALS, QUANT, View, encode_patterns, html_page, result_payload

__all__ = ["view", "demo_view", "STORY"]

# The demo's role-swap story: (clean, corrupted, answer, wrong).
STORY = ("The cat chased the mouse. The one who chased was the", "The mouse chased the cat. The one who chased was the",
         " cat", " mouse")


def _vocab_for(model, vocab):
    if vocab is not None:
        return vocab
    from minitx.prompts import Vocab
    return Vocab(model.cfg)


def _as_tokens(prompt, vocab, prepend_bos: bool) -> Tensor:
    """-> [1, pos] token ids (on the CPU; each run moves them to the model's device)."""
    if isinstance(prompt, Tensor):
        return prompt.reshape(1, -1).cpu()
    return vocab.tokens(prompt, prepend_bos=prepend_bos)


def _lens_payload(lens: Lens, tokens: Tensor, vocab, top_k: int, words: dict) -> dict:
    """One prompt read through a lens: labels, and per (layer, pos) the top-k ids and probabilities."""
    result = read_lens(lens, tokens.to(lens.model.W_E.device), top_k=top_k)
    top = result.top_tokens[:, 0]  # [layer+1, pos, k]
    for token_id in top.unique().tolist():
        words.setdefault(str(token_id), vocab.decode(token_id))
    return {"kind": result.lens, "labels": result.labels, "ids": top.tolist(),
            "probs": result.top_probs[:, 0].round(decimals=DECIMALS).tolist()}


def _prompt_payload(model, tokens: Tensor, vocab, top_k: int, words: dict, lens: Lens | None) -> dict:
    with torch.no_grad():
        patterns = attention_patterns(model, tokens.to(model.W_E.device))[:, 0]  # [layer, head, q, k]
    entry = {"tokens": vocab.str_tokens(tokens[0]), "ids": tokens[0].tolist(), "attn": encode_patterns(patterns)}
    if lens is not None:
        entry["lens"] = _lens_payload(lens, tokens, vocab, top_k, words)
    return entry


def _title(result) -> str:
    """e.g. "denoising z", "EAP edge scores", or the result's type."""
    if getattr(result, "method", None) and hasattr(result, "graph"):
        return f"{result.method} edge scores"
    words = [getattr(result, "direction", None), getattr(result, "point", None)]
    return " ".join(w for w in words if w) or type(result).__name__


def view(model, prompts, *, prepend_bos: bool, model_name: str = "", vocab=None, results=(), pair=None,
         top_k: int = 5, lens: bool | Lens = True, title: str = "minitx view") -> View:
    """Returns View: the page for `prompts` (a str, a list of str, or token ids [batch, pos] / [pos]).

    prepend_bos: said on the page; applied to text prompts (token tensors are used as given).
    vocab: a minitx.prompts.Vocab (default: GPT-2's tokenizer for a 50257-id model, else integer ids).
    results: Result objects to show: patching, path patching ... as heatmaps, circuit discovery's edge scores
    (discovery.EdgeScores) as a circuit graph; `pair` = (clean, corrupted)
    prompts or tokens they were computed on, shown on hover and used to label positions.
    top_k: tokens listed on hover of a lens cell. lens: True for the logit lens, a Lens of this model (e.g. a
    minitx.tuned_lens.TunedLens) to read the streams through it instead, False to leave the table out.
    """
    vocab = _vocab_for(model, vocab)
    lens = LogitLens(model) if lens is True else lens or None
    if isinstance(prompts, (str, Tensor)):
        prompts = [prompts] if isinstance(prompts, str) or prompts.dim() == 1 else list(prompts)
    words: dict[str, str] = {}
    entries = [_prompt_payload(model, _as_tokens(p, vocab, prepend_bos), vocab, top_k, words, lens) for p in prompts]
    pair_data, pos_labels = None, None
    if pair is not None:
        clean, corrupted = (_as_tokens(p, vocab, prepend_bos) for p in pair)
        pair_data = {"clean": vocab.str_tokens(clean[0]), "corrupted": vocab.str_tokens(corrupted[0])}
        pos_labels = [a if a == b else f"{a}/{b}" for a, b in zip(pair_data["clean"], pair_data["corrupted"])]
    panels = [result_payload(r, _title(r), pos_labels, pair_data) for r in results]
    cfg = model.cfg
    data = {"title": title, "model": model_name or f"{cfg.n_layer}-layer GPT-2 ({cfg.n_head} heads)",
            "n_layer": cfg.n_layer, "n_head": cfg.n_head, "bos": bool(prepend_bos), "quant": QUANT,
            "prompts": entries, "words": words, "results": panels, "top_k": top_k}
    return View(html=html_page(data), data=data)


def demo_view(model, vocab=None, *, prepend_bos: bool = True, model_name: str = "") -> View:
    """The page `minitx demo --html` writes. A text model: "The cat sat on the" and the role-swap STORY, with
    activation patching of resid_pre by position and z by head and EAP edge scores on the story pair. A model of
    bare ids (the induction fixture): [BOS] + r + r, r = 10 random ids (heads.repeated_tokens, seed 0)."""
    from minitx.discovery import eap
    from minitx.metrics import logit_diff_metric
    from minitx.patching import activation_patching
    vocab = _vocab_for(model, vocab)
    if not vocab.is_text:
        n = max(1, min(10, (model.cfg.n_ctx - 1) // 2))
        tokens = repeated_tokens(model.cfg.d_vocab, n, 1, 0, prepend_bos, vocab.bos)
        return view(model, tokens, prepend_bos=prepend_bos, model_name=model_name, vocab=vocab,
                    title="minitx demo: attention and the logit lens on a repeated sequence")
    clean, corrupted = (vocab.tokens(p, prepend_bos=prepend_bos) for p in STORY[:2])
    metric = logit_diff_metric(vocab.token(STORY[2]), vocab.token(STORY[3]))
    results = [activation_patching(model, clean, corrupted, metric, "resid_pre", by="pos"),
               activation_patching(model, clean, corrupted, metric, "z", by="all"), eap(model, clean, corrupted, metric)]
    return view(model, ["The cat sat on the", STORY[0]], prepend_bos=prepend_bos, model_name=model_name, vocab=vocab,
                results=results, pair=(clean, corrupted), title="minitx demo: attention, logit lens, patching, circuit")

