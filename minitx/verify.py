"""`minitx verify`: the same checkpoint through minitx and HF transformers, point by point.

transformers is imported here only, and only when a user asks for this report; it is never a
run-time dependency of minitx itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minitx.hooks import get_act_name


@dataclass
class Row:
    point: str  # minitx name (and what it is compared with)
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def parity_rows(model, hf_model, prompts: torch.Tensor, attention_mask: torch.Tensor,
                tolerance: float = 1e-4, new_tokens: int = 20) -> list[Row]:
    """Returns one Row per mappable activation point, the logits and greedy generation.

    prompts [batch, pos] (a padded batch: attention_mask [batch, pos] marks the real tokens).
    HF's hidden_states[l] is minitx's resid_pre of layer l; its last entry is after ln_f.
    """
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # the rule HF applies in generate
    real = attention_mask.bool()
    with torch.no_grad():
        out = hf_model(prompts, attention_mask=attention_mask, position_ids=positions,
                       output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(prompts, attention_mask=attention_mask)

    def diff(a, b):
        return float((a.float() - b.float())[real].abs().max())

    rows = []
    for layer in range(model.cfg.n_layer):
        rows.append(Row(f"{get_act_name('resid_pre', layer)} (hidden_states[{layer}])",
                        diff(cache["resid_pre", layer], out.hidden_states[layer]), tolerance))
    rows.append(Row("ln_final.hook_normalized (hidden_states[-1], after ln_f)",
                    diff(cache["ln_final.hook_normalized"], out.hidden_states[-1]), tolerance))
    for layer in range(model.cfg.n_layer):
        pattern, hf_pattern = cache["pattern", layer], out.attentions[layer]
        keep = real[:, None, :, None] & real[:, None, None, :]  # real query and real key
        rows.append(Row(f"{get_act_name('pattern', layer)} (attentions[{layer}])",
                        float((pattern - hf_pattern).abs().masked_fill(~keep, 0).max()), tolerance))
    rows.append(Row("logits", diff(logits, out.logits), tolerance))
    with torch.no_grad():
        expected = hf_model.generate(prompts, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                     do_sample=False, pad_token_id=0, eos_token_id=None)
    ours = model.generate(prompts, new_tokens, attention_mask=attention_mask)
    rows.append(Row(f"greedy tokens ({new_tokens} new; 0 = identical)", float((ours != expected).sum()), 0.0))
    return rows


def verify(name_or_path: str, tolerance: float = 1e-4, seed: int = 0) -> list[Row]:
    """Loads the checkpoint in both libraries and returns the parity rows."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError("minitx verify needs transformers as the reference: pip install transformers") from error
    from transformers.utils import logging as hf_logging
    import minitx
    from minitx.loading import load

    model = load(name_or_path)
    source = _hf_source(name_or_path)
    # float32 whatever the checkpoint stores, as minitx loads it (the keyword was torch_dtype before 4.56)
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    dtype = {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": torch.float32}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the table alone on the command line, no "Loading weights" bar
    try:
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(source, attn_implementation="eager", **dtype).eval()
    except Exception as error:  # noqa: BLE001 - any failure of the reference is one line, not a traceback
        raise ValueError(f"transformers could not load {source} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    generator = torch.Generator().manual_seed(seed)
    n_ctx = model.cfg.n_ctx
    texts = ["The cat sat on the mat because", "When Mary and John went to the store, John gave a drink to",
             "def fibonacci(n):"]
    tokens = None
    if model.cfg.d_vocab == 50257:  # a real GPT-2 vocabulary: English prompts, if they leave room to generate
        tokens, mask = minitx.Tokenizer.default().to_tokens_padded(texts, prepend_bos=False, padding_side="left")
        tokens = tokens if tokens.shape[1] < n_ctx else None
    if tokens is None:
        length = max(1, min(12, n_ctx // 2))
        tokens = torch.randint(0, model.cfg.d_vocab, (3, length), generator=generator)
        mask = torch.ones_like(tokens)
        mask[1, :min(3, length - 1)] = 0  # one left-padded row
    return parity_rows(model, hf_model, tokens, mask, tolerance, new_tokens=min(20, n_ctx - tokens.shape[1]))


def _hf_source(name_or_path: str) -> str:
    """The directory transformers reads: a local directory; a file's folder (its config.json must be
    there); a hub id's cached snapshot, which `load` has just filled."""
    from pathlib import Path
    from minitx.hub import cached_snapshot
    path = Path(name_or_path)
    if path.exists():
        folder = path if path.is_dir() else path.parent
        if not (folder / "config.json").is_file():
            raise ValueError(f"{name_or_path}: transformers needs the model's config.json beside the weights, "
                             "which minitx found in the file's metadata; save it with minitx.save_pretrained or "
                             "give the model's directory")
        return str(folder)
    return str(cached_snapshot(name_or_path))


def format_rows(rows: list[Row]) -> str:
    width = max(len(r.point) for r in rows)
    lines = [f"{'point':<{width}}  {'max |diff|':>11}  ok"]
    lines += [f"{r.point:<{width}}  {r.max_abs_diff:>11.3g}  {'yes' if r.ok else 'NO'}" for r in rows]
    return "\n".join(lines)


def processing_rows(processed, source, tokens: torch.Tensor, tolerance: float = 1e-4) -> list[Row]:
    """A processed model (minitx.processing) against the model it came from, on tokens [batch, pos]: one Row per
    invariant of docs/methods.md §11, each point naming the transforms that keep it."""
    steps = processed.cfg.processing
    if not steps or source.cfg.processing:
        raise ValueError(f"the model must be processed (minitx.processing) and its source raw; their config's "
                         f"processing is {list(steps)} and {list(source.cfg.processing)}")
    with torch.no_grad():
        logits, cache = processed.run_with_cache(tokens)
        source_logits, source_cache = source.run_with_cache(tokens)

    def diff(a, b):
        return float((a.double() - b.double()).abs().max())

    def centred(x):  # minus the mean over the last axis
        return x - x.mean(-1, keepdim=True)

    shifted = "center_unembed" in steps  # logits move by one constant per position
    rows = [Row("log-probs (every transform)", diff(logits.log_softmax(-1), source_logits.log_softmax(-1)), tolerance),
            Row("logits minus their mean per position (center_unembed adds a constant per position)" if shifted
                else "logits (fold_ln, center_writing_weights, fold_value_biases)",
                diff(centred(logits), centred(source_logits)) if shifted else diff(logits, source_logits), tolerance)]
    written = "center_writing_weights" in steps  # the stream loses its mean over d_model
    for layer in range(processed.cfg.n_layer):
        rows.append(Row(f"{get_act_name('pattern', layer)} (every transform)",
                        diff(cache["pattern", layer], source_cache["pattern", layer]), tolerance))
        ours, theirs = cache["attn_out", layer], source_cache["attn_out", layer]
        rows.append(Row(f"{get_act_name('attn_out', layer)}{' minus its mean over d_model' if written else ''} "
                        f"(fold_ln, fold_value_biases{', center_writing_weights' if written else ''})",
                        diff(centred(ours), centred(theirs)) if written else diff(ours, theirs), tolerance))
        if written:
            rows.append(Row(f"{get_act_name('resid_post', layer)}: mean over d_model is 0 (center_writing_weights)",
                            float(cache["resid_post", layer].double().mean(-1).abs().max()), tolerance))
    return rows


def verify_processed(name_or_path: str, source: str, tolerance: float = 1e-4, seed: int = 0) -> list[Row]:
    """Loads a processed checkpoint and its raw source (both with minitx) and returns processing_rows on random
    tokens. transformers is not needed: the reference is the source model."""
    from minitx.loading import load
    processed, raw = load(name_or_path), load(source)
    if (processed.cfg.d_vocab, processed.cfg.n_layer, processed.cfg.d_model) != (raw.cfg.d_vocab, raw.cfg.n_layer,
                                                                                 raw.cfg.d_model):
        raise ValueError(f"{name_or_path} and {source} are not the same model shape, so one cannot be the other "
                         "processed")
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, raw.cfg.d_vocab, (3, max(2, min(16, raw.cfg.n_ctx))), generator=generator)
    return processing_rows(processed, raw, tokens, tolerance)
