"""Bad inputs: each gives one clear error (what was wrong, what is allowed) and leaves nothing behind.

One table, `CASES`: (input, exception type, a fragment of the message). The CLI has its own table,
`CLI_CASES`, because it answers with an exit code and one stderr line instead of an exception.
Rows marked xfail(strict=True) are inputs whose error is NOT clear today (a raw IndexError or
RuntimeError from torch internals, an AttributeError, or nothing at all); each row asserts the error
it should give, so it turns into an XPASS failure once the library is fixed and the mark can go.
docs/bad-inputs.md shows every row with the message a user sees.

Covered elsewhere, not repeated here:
  tests/test_model.py::test_bad_tokens (ids outside the vocabulary, 65 tokens for 64 positions,
    empty [1, 0] and [0, 3] batches, float ids, a list), ::test_attention_mask_must_match_tokens,
    ::test_unknown_name_suggests_close_names, ::test_bad_hook_results_name_the_hook (shape, float64,
    NaN, a str), ::test_replacing_ln1_while_using_head_inputs_is_an_error, ::test_start_and_stop_at_layer_compose;
  tests/test_tokenizer.py::test_to_tokens_errors, ::test_to_str_tokens, ::test_to_single_token,
    ::test_decode_rejects_unknown_id;
  tests/test_loading.py, tests/test_download.py (checkpoints, configs, hub names, downloads);
  tests/test_patching.py::test_metrics_values_and_validation, ::test_unequal_lengths_raise_naming_lengths_and_positions;
  tests/test_path_patching.py::test_validation_direct_path_and_no_state;
  tests/test_lens.py::test_errors, tests/test_dla.py::test_errors, tests/test_heads.py::test_offset_errors,
    ::test_detect_head_options_and_errors, ::test_role_swap_identity_and_errors;
  tests/test_attribution.py::test_no_state_left_behind_and_errors;
  tests/test_cli.py::test_bad_inputs_give_one_line_and_exit_2, ::test_usage_errors_and_missing_model.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

import minitx
from minitx import attribution, cli, datasets, dla, heads, jacobian_lens, lens, metrics, patching, path_patching, plots
from minitx import tuned_lens
from minitx.tokenizer import Tokenizer
from tests.conftest import random_model

REPO = cli.REPO_ROOT
NAN = float("nan")


@pytest.fixture(scope="module")
def env():
    """A 2-layer, 4-head model (64 wide, 64 positions, 257 ids), a clean/corrupted pair differing at position 2."""
    model = random_model()
    tokens = torch.tensor([[11, 22, 33, 44, 55], [66, 77, 88, 99, 110]])
    corrupted = tokens.clone()
    corrupted[:, 2] = torch.tensor([120, 130])
    return SimpleNamespace(m=model, T=tokens, C=corrupted, tok=Tokenizer.default(),
                           metric=metrics.logit_diff_metric(3, 5), logits=model(tokens))


def checksum(model) -> str:
    digest = hashlib.sha256()
    for name, p in model.state_dict().items():
        digest.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def case(id, call, exc, fragment, unclear=None):
    """call(env) must raise `exc` whose message contains `fragment`. unclear: why today's error is not clear."""
    marks = [pytest.mark.xfail(strict=True, reason=unclear)] if unclear else []
    return pytest.param(call, exc, fragment, id=id, marks=marks)


def inplace_nan(x, hook):  # writes NaN into the activation and returns None
    x.mul_(NAN)


def nan_noise(x, hook):
    return x * NAN


def run_in_hooks_context(model, hooks, tokens):
    with model.hooks(fwd_hooks=hooks):
        return model(tokens)


def swapped(t, a, b):
    perm = list(range(t.shape[1]))
    perm[a], perm[b] = b, a
    return t[:, perm]



_FILES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def remove_saved_folders():
    """saved()'s folders go when the module's tests end (they were left in the temporary folder on every run)."""
    yield
    for path in _FILES.values():
        shutil.rmtree(path, ignore_errors=True)
    _FILES.clear()


def saved(name: str, config: dict | None = None, tensors: dict | None = None) -> Path:
    """A 1-layer checkpoint (8 wide, 8 positions, 20 ids) in its own temporary folder, made once per name,
    with config.json entries and tensors (HF names) replaced: a bad checkpoint for one row."""
    if name not in _FILES:
        path = Path(tempfile.mkdtemp(prefix=f"minitx-bad-{name}-"))
        minitx.save_pretrained(random_model(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=20,
                                            bos_token_id=0), path)
        hf_config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**hf_config, **(config or {})}))  # inf -> Infinity
        if tensors:
            state = safetensors.torch.load_file(path / "model.safetensors")
            safetensors.torch.save_file({**state, **tensors}, path / "model.safetensors", metadata={"format": "pt"})
        _FILES[name] = path
    return _FILES[name]


# Role-swap pairs of two token lengths: the passive question ("was chased by") is one token longer.
MIXED_LENGTHS = [
    {"clean": "The cat chased the dog. The one who chased was the", "answer": " cat", "wrong": " dog",
     "corrupted": "The dog chased the cat. The one who chased was the"},
    {"clean": "The cat chased the dog. The one who was chased was the", "answer": " dog", "wrong": " cat",
     "corrupted": "The dog chased the cat. The one who was chased was the"},
    {"clean": "The bird helped the frog. The one who was helped was the", "answer": " frog", "wrong": " bird",
     "corrupted": "The frog helped the bird. The one who was helped was the"},
]


def pairs_file(name: str, rows: list[dict]) -> Path:
    """A JSONL pairs file (pairs.jsonl) in its own temporary folder, made once per name (removed with saved()'s)."""
    if name not in _FILES:
        _FILES[name] = Path(tempfile.mkdtemp(prefix=f"minitx-bad-{name}-"))
        (_FILES[name] / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return _FILES[name] / "pairs.jsonl"


def with_bin(name: str, content) -> Path:
    """A checkpoint folder whose weights are pytorch_model.bin holding `content` (bytes, or an object to torch.save)."""
    path = saved(name)
    (path / "model.safetensors").unlink(missing_ok=True)
    if isinstance(content, bytes):
        (path / "pytorch_model.bin").write_bytes(content)
    else:
        torch.save(content, path / "pytorch_model.bin")
    return path


def load_from(folder: Path, name: str):
    """minitx.load(name) with `folder` as the working directory (for relative paths)."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return minitx.load(name)
    finally:
        os.chdir(cwd)


def weight(name: str, edit) -> dict:
    state = safetensors.torch.load_file(saved("reference") / "model.safetensors")
    tensor = state[name].clone()
    edit(tensor)
    return {name: tensor}


RESID = torch.zeros(2, 5, 64)  # a residual stream of env's model


def cached(e):
    return e.m.run_with_cache(e.T, names_filter=["blocks.0.attn.hook_pattern"])[1]


E0 = torch.zeros(2, 0, dtype=torch.long)  # two prompts of zero tokens
LONG = torch.zeros(1, 65, dtype=torch.long)  # one token more than n_positions=64

CASES = [
    # ---- token ids outside the vocabulary (model(...) itself: test_model.py::test_bad_tokens) ------------------
    case("vocab-generate-prompt", lambda e: e.m.generate(torch.tensor([[1, 257]]), 2), ValueError,
         "token id 257 is outside the vocabulary; allowed ids are 0..256"),
    case("vocab-run_with_cache-negative", lambda e: e.m.run_with_cache(torch.tensor([[-3, 1]])), ValueError,
         "token id -3 is outside the vocabulary; allowed ids are 0..256"),
    case("vocab-logit_lens", lambda e: lens.logit_lens(e.m, e.T + 300), ValueError, "allowed ids are 0..256"),
    case("vocab-patching-corrupted", lambda e: patching.activation_patching(e.m, e.T, e.C + 300, e.metric),
         ValueError, "is outside the vocabulary; allowed ids are 0..256"),
    case("vocab-tokenizer-decode-negative", lambda e: e.tok.decode([-1]), ValueError,
         "token id -1 is not in the vocabulary of 50257"),
    case("vocab-tokenizer-to_string-batch", lambda e: e.tok.to_string(torch.tensor([[1, 60000]])), ValueError,
         "token id 60000 is not in the vocabulary of 50257"),
    case("generate-all-padding-row", lambda e: e.m.generate(e.T, 2, attention_mask=torch.tensor([[1] * 5, [0] * 5])),
         ValueError, "attention_mask row 1 has no real token, so there is nothing to continue"),
    case("vocab-generate-eos_token_id", lambda e: e.m.generate(e.T, 2, eos_token_id=999), ValueError,
         "eos_token_id"),
    case("vocab-lens-target-id", lambda e: lens.logit_lens(e.m, e.T, targets=300), ValueError,
         "outside the vocabulary"),
    case("vocab-lens-target-negative", lambda e: lens.logit_lens(e.m, e.T, targets=-1), ValueError,
         "outside the vocabulary"),
    case("vocab-lens-target-float", lambda e: lens.logit_lens(e.m, e.T, targets=2.5), TypeError, "targets"),
    case("vocab-dla-answer-float", lambda e: dla.direct_logit_attribution(e.m, e.T, 3.7), TypeError, "answer"),
    # ---- sequences longer than n_positions (model(...): test_model.py::test_bad_tokens) ------------------------
    case("long-run_with_cache", lambda e: e.m.run_with_cache(LONG), ValueError,
         "the sequence reaches position 64, but this model has n_positions=64 (positions 0..63)"),
    case("long-generate-prompt-plus-new", lambda e: e.m.generate(e.T, 60), ValueError,
         "5 prompt tokens + 60 new ones exceed n_positions=64"),
    case("long-patching", lambda e: patching.activation_patching(e.m, LONG, LONG + 1, e.metric), ValueError,
         "n_positions=64"),
    case("long-induction_scores", lambda e: heads.induction_scores(e.m, n=40), ValueError,
         "n=40 gives 81 positions but the model has n_positions=64"),
    case("long-detect_head", lambda e: heads.detect_head(e.m, LONG[:, :64], "previous_token_head"), ValueError,
         "detect_head needs 1 < pos < n_ctx=64"),
    # ---- empty prompts and batches (model(...): test_model.py::test_bad_tokens; to_tokens: test_tokenizer.py) ---
    case("empty-generate", lambda e: e.m.generate(E0[:1], 2), ValueError, "at least one token, got shape (1, 0)"),
    case("empty-run_with_cache", lambda e: e.m.run_with_cache(E0), ValueError, "at least one token"),
    case("empty-tokenizer-padded-no-prompts", lambda e: e.tok.to_tokens_padded([], prepend_bos=True), ValueError,
         "no prompts given: expected a string or a non-empty list of strings"),
    case("empty-tokenizer-padded-empty-prompt", lambda e: e.tok.to_tokens_padded(["Hi", ""], prepend_bos=False),
         ValueError, "empty prompt '' gives zero tokens; use prepend_bos=True or non-empty text"),
    case("empty-tokenizer-to_str_tokens", lambda e: e.tok.to_str_tokens("", prepend_bos=False), ValueError,
         "empty prompt ''"),
    case("empty-patching-batch", lambda e: patching.activation_patching(e.m, e.T[:0], e.C[:0], e.metric),
         ValueError, "at least one token"),
    case("empty-logit_lens", lambda e: lens.logit_lens(e.m, E0), ValueError, "at least one token"),
    case("empty-attention_patterns", lambda e: heads.attention_patterns(e.m, E0), ValueError, "at least one token"),
    case("empty-bos_attention_scores", lambda e: heads.bos_attention_scores(e.m, E0), ValueError,
         "needs at least 2 positions"),
    case("empty-detect_head", lambda e: heads.detect_head(e.m, E0, "previous_token_head"), ValueError,
         "the prompts have 0 tokens"),
    case("empty-decompose_resid", lambda e: dla.decompose_resid(e.m, E0), ValueError, "at least one token"),
    case("empty-offset_scores", lambda e: heads.offset_scores(e.m, E0), ValueError, "at least one token"),
    case("empty-role_swap", lambda e: heads.role_swap(e.m, E0, E0, (0, 0)), ValueError, "at least one token"),
    case("empty-duplicate_token_scores", lambda e: heads.duplicate_token_scores(e.m, E0), ValueError,
         "at least one token"),
    case("empty-induction-batch-0", lambda e: heads.induction_scores(e.m, n=3, batch=0), ValueError, "batch"),
    # ---- prompts of the wrong type ------------------------------------------------------------------------------
    case("type-tokens-3d", lambda e: e.m(torch.zeros(1, 2, 3, dtype=torch.long)), ValueError,
         "tokens must be [batch, pos] with at least one token, got shape (1, 2, 3)"),
    case("type-tokens-bool", lambda e: e.m(torch.ones(1, 3, dtype=torch.bool)), TypeError,
         "tokens must be integer ids, got torch.bool"),
    case("type-generate-float-tokens", lambda e: e.m.generate(e.T.float(), 2), TypeError, "integer ids"),
    case("type-start_at_layer-given-tokens", lambda e: e.m(e.T, start_at_layer=1), ValueError,
         "with start_at_layer the input is a residual stream [batch, pos, 64], torch.float32 on cpu; got shape (2, 5)"),
    case("keep_last-zero", lambda e: e.m(e.T, keep_last=0), ValueError,
         "keep_last=0 is not allowed: an int from 1 to the 5 positions run"),
    case("keep_last-too-many", lambda e: e.m(e.T, keep_last=6), ValueError, "an int from 1 to the 5 positions run"),
    case("keep_last-no-block", lambda e: e.m(e.T, stop_at_layer=0, keep_last=1), ValueError,
         "this call runs none"),
    case("start_at_mid-without-start", lambda e: e.m(e.T, start_at_mid=True), ValueError,
         "start_at_mid needs start_at_layer"),
    case("type-patching-list", lambda e: patching.activation_patching(e.m, [[1, 2]], e.C, e.metric), TypeError,
         "tokens must be a LongTensor [batch, pos], got list"),
    case("type-patching-float-tensor", lambda e: patching.activation_patching(e.m, e.T.float(), e.C, e.metric),
         TypeError, "float32"),
    case("type-lens-list", lambda e: lens.logit_lens(e.m, [[1, 2]]), TypeError, "LongTensor"),
    case("type-dla-list", lambda e: dla.decompose_resid(e.m, [[1, 2]]), TypeError, "LongTensor"),
    case("type-attribution-list", lambda e: attribution.attribution_patching(e.m, [[1]], e.C, e.metric), TypeError,
         "LongTensor"),
    case("type-tokenizer-int", lambda e: e.tok.to_tokens(5, prepend_bos=True), TypeError, "string"),
    # ---- counts and scales given as the wrong type ---------------------------------------------------------------
    case("count-patching-max_rows-str", lambda e: patching.activation_patching(e.m, e.T, e.C, e.metric, max_rows="8"),
         ValueError, "max_rows='8': the most rows (patches x batch) one forward may hold, an int >= 1"),
    case("count-path-max_rows-zero", lambda e: path_patching.path_patch_senders(e.m, e.T, e.C, "logits", e.metric,
         max_rows=0), ValueError, "max_rows=0: the most rows (senders x batch) one forward may hold, an int >= 1"),
    case("count-atp-max_rows-float", lambda e: attribution.atp_star_qk_fix(e.m, e.T, e.C, e.metric, max_rows=8.0),
         ValueError, "max_rows=8.0"),
    case("count-induction-n-str", lambda e: heads.induction_scores(e.m, n="5"), ValueError,
         "n='5': the number of random tokens in each half, an int >= 1"),
    case("scale-gaussian-noise-std_factor", lambda e: patching.gaussian_noise_embeddings(e.m, e.T, 1, std_factor="3"),
         ValueError, "std_factor='3': the noise std in units of the embeddings' std, a finite number > 0"),
    case("metric-atp-not-differentiable", lambda e: attribution.attribution_patching(
        e.m, e.T, e.C, lambda logits: logits[:, -1].argmax(-1).float()), ValueError,
         "the metric must be differentiable in the logits"),
    case("sender-three-ints", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 1, 2), "logits", e.metric),
         ValueError, "sender (0, 1, 2): use a head (layer, head)"),
    case("lens-positions-empty", lambda e: lens.logit_lens(e.m, e.T, positions=[]), ValueError,
         "positions is empty"),
    case("type-tokenizer-none", lambda e: e.tok.to_tokens(None, prepend_bos=True), TypeError, "string"),
    case("type-tokenizer-list-with-int", lambda e: e.tok.to_tokens(["a", 5], prepend_bos=True), TypeError,
         "prompt"),
    case("type-tokenizer-str_tokens-3d", lambda e: e.tok.to_str_tokens(torch.zeros(1, 1, 2, dtype=torch.long)),
         ValueError, "one sequence"),
    case("type-tokenizer-decode-float", lambda e: e.tok.decode([15496, 1.5]), TypeError,
         "token ids must be integers, got float 1.5"),
    # ---- attention masks that do not match (shape: test_model.py::test_attention_mask_must_match_tokens) --------
    case("mask-batch", lambda e: e.m(e.T, attention_mask=torch.ones(3, 5)), ValueError,
         "attention_mask has shape (3, 5) but the input needs (2, 5): one 0/1 entry per token"),
    case("mask-1d", lambda e: e.m(e.T[0], attention_mask=torch.ones(5)), ValueError,
         "attention_mask has shape (5,) but the input needs (1, 5)"),
    case("mask-run_with_cache", lambda e: e.m.run_with_cache(e.T, attention_mask=torch.ones(2, 4)), ValueError,
         "attention_mask has shape (2, 4)"),
    case("mask-list", lambda e: e.m(e.T, attention_mask=[[1] * 5] * 2), TypeError, "attention_mask"),
    case("mask-values-2", lambda e: e.m(e.T, attention_mask=torch.full((2, 5), 2)), ValueError, "0 and 1"),
    case("mask-values-half", lambda e: e.m(e.T, attention_mask=torch.full((2, 5), 0.5)), ValueError, "0 and 1"),
    case("mask-generate", lambda e: e.m.generate(e.T, 2, attention_mask=torch.ones(2, 4)), ValueError,
         "attention_mask has shape (2, 4)"),
    # ---- other generate arguments -------------------------------------------------------------------------------
    case("generate-top_k-0", lambda e: e.m.generate(e.T, 2, temperature=1.0, top_k=0), ValueError, "top_k"),
    case("generate-temperature-negative", lambda e: e.m.generate(e.T, 2, temperature=-1.0), ValueError,
         "temperature"),
    case("generate-temperature-nan", lambda e: e.m.generate(e.T, 2, temperature=NAN), ValueError, "temperature"),
    # ---- clean/corrupted pairs of different lengths (activation_patching, path_patch, attribution_patching:
    #      test_patching.py, test_path_patching.py, test_attribution.py) -------------------------------------------
    case("pair-patch_one", lambda e: patching.patch_one(e.m, e.T, torch.cat([e.C, e.C[:, :2]], 1), "z", 0, head=0),
         ValueError, "clean has 5 tokens, corrupted 7. Over the first 5 positions tokens differ at [2]; positions 5..6 "
                     "exist in only one."),
    case("pair-batch-sizes", lambda e: patching.activation_patching(e.m, e.T, e.C[:1], e.metric), ValueError,
         "clean has 2 prompts and corrupted 1; patching pairs them one to one"),
    case("pair-path_patch_senders", lambda e: path_patching.path_patch_senders(e.m, e.T, e.C[:, :4], "logits",
                                                                               e.metric), ValueError,
         "clean has 5 tokens, corrupted 4. Over the first 4 positions tokens differ at [2]"),
    case("pair-direct_path_patch", lambda e: path_patching.direct_path_patch(e.m, e.T, e.C[:, :4], (0, 0),
                                                                             ("q", 1, 0), e.metric), ValueError,
         "clean has 5 tokens, corrupted 4"),
    case("pair-atp_star_qk_fix", lambda e: attribution.atp_star_qk_fix(e.m, e.T, e.C[:, :4], e.metric), ValueError,
         "clean has 5 tokens, corrupted 4"),
    case("pair-mean_ablation-values", lambda e: patching.activation_patching(
        e.m, e.T, patching.mean_ablation(e.m, torch.zeros(3, 4, dtype=torch.long)), e.metric, direction="noising"),
         ValueError, "clean has 5 tokens, corrupted 4"),
    case("pair-resample-reference", lambda e: patching.resample_ablation(e.T, torch.zeros(3, 4, dtype=torch.long)),
         ValueError, "clean has 5 tokens, corrupted 4"),
    case("pair-role_swap-not-a-swap", lambda e: heads.role_swap(e.m, e.T, e.C, (1, 3)), ValueError,
         "tokens_b is not tokens_a with positions 1 and 3 swapped: they differ at prompt 0 position 1"),
    # ---- positions out of range in analysis calls ----------------------------------------------------------------
    case("pos-metric-tensor", lambda e: metrics.logit_diff(e.logits, 3, 5, pos=torch.tensor([0, 9])), ValueError,
         "position 9 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("pos-kl_to", lambda e: metrics.kl_to(e.logits, pos=-6), ValueError, "position -6 is out of range"),
    case("pos-metric-bool", lambda e: metrics.logit_diff_metric(3, 5, pos=True), TypeError,
         "pos must be an int or a LongTensor [batch], got bool"),
    case("pos-patching-metric", lambda e: patching.activation_patching(e.m, e.T, e.C, metrics.logit_diff_metric(
        3, 5, pos=7)), ValueError, "position 7 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("vocab-gaussian-noise", lambda e: patching.gaussian_noise_embeddings(e.m, e.T + 300, 1), ValueError,
         "token id 410 is outside the vocabulary; allowed ids are 0..256"),
    case("pos-gaussian-noise", lambda e: patching.gaussian_noise_embeddings(e.m, e.T, [1, 9]), ValueError,
         "position 9 is out of range"),
    case("pos-gaussian-noise-float", lambda e: patching.gaussian_noise_embeddings(e.m, e.T, 1.5), ValueError,
         "positions must be None, an int, a list of ints"),
    case("pos-gaussian-noise-float-list", lambda e: patching.gaussian_noise_embeddings(e.m, e.T, [1, 2.5]),
         ValueError, "positions must be None, an int, a list of ints"),
    case("pos-patch_one-pos", lambda e: patching.patch_one(e.m, e.T, e.C, "resid_pre", 0, pos=9), ValueError,
         "position 9 is out of range"),
    case("pos-patch_one-head", lambda e: patching.patch_one(e.m, e.T, e.C, "z", 0, head=9), ValueError,
         "head 9 is out of range"),
    case("pos-patch_one-layer", lambda e: patching.patch_one(e.m, e.T, e.C, "resid_pre", 5), KeyError,
         "unknown activation point 'blocks.5.hook_resid_pre'; did you mean blocks.1.hook_resid_pre"),
    case("pos-path_patch-sender_pos", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), "logits", e.metric,
                                                                         sender_pos=9), ValueError,
         "position 9 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("pos-path_patch-receiver_pos", lambda e: path_patching.path_patch(
        e.m, e.T, e.C, (0, 0), ("q", 1, 0), e.metric, receiver_pos=[1, -6]), ValueError, "position -6 is out of range"),
    case("pos-path_patch-bool-mask", lambda e: path_patching.path_patch(
        e.m, e.T, e.C, (0, 0), "logits", e.metric, sender_pos=torch.ones(2, 4, dtype=torch.bool)), ValueError,
         "a boolean position mask must be [batch, pos]=[2, 5], got (2, 4)"),
    case("pos-dla-tensor", lambda e: dla.direct_logit_attribution(e.m, e.T, 3, pos=torch.tensor([0, 7])), ValueError,
         "position 7 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("pos-dla-negative", lambda e: dla.decompose_resid(e.m, e.T, pos=-6), ValueError,
         "position -6 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("pos-dla-float", lambda e: dla.direct_logit_attribution(e.m, e.T, 3, pos=1.5), TypeError, "pos"),
    case("pos-lens-negative", lambda e: lens.logit_lens(e.m, e.T, positions=-6), ValueError,
         "position -6 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("pos-cached_scale_lens", lambda e: lens.cached_scale_lens(e.m, e.T, positions=[9]), ValueError,
         "position 9 is out of range"),
    case("pos-lens-float", lambda e: lens.logit_lens(e.m, e.T, positions=1.5), TypeError, "positions"),
    case("pos-lens-targets-shape", lambda e: lens.logit_lens(e.m, e.T, targets=torch.zeros(3, 1, dtype=torch.long)),
         ValueError, "targets"),
    case("pos-lens-top_k-negative", lambda e: lens.logit_lens(e.m, e.T, top_k=-1), ValueError, "top_k"),
    case("pos-role_swap-swap", lambda e: heads.role_swap(e.m, e.T, e.T, (1, 9)), ValueError,
         "swap_positions: position 9 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("pos-role_swap-negative", lambda e: heads.role_swap(e.m, e.T, e.T, (-6, 1)), ValueError,
         "swap_positions: position -6 is out of range"),
    case("pos-role_swap-queries", lambda e: heads.role_swap(e.m, e.T, swapped(e.T, 1, 2), (1, 2),
                                                            query_positions=[2, 9]), ValueError,
         "query_positions: position 9 is out of range for prompts of 5 tokens; allowed: -5..4"),
    case("pos-role_swap-one-position", lambda e: heads.role_swap(e.m, e.T, e.T, (1,)), ValueError, "two positions"),
    case("pos-detect_head-heads-layer", lambda e: heads.detect_head(e.m, e.T, "previous_token_head", heads=[(5, 0)]),
         ValueError, "layer 5"),
    case("pos-detect_head-heads-head", lambda e: heads.detect_head(e.m, e.T, "previous_token_head", heads={0: [9]}),
         ValueError, "head 9"),
    case("pos-offset-one-token", lambda e: heads.previous_token_scores(e.m, e.T[:, :1]), ValueError,
         "max_offset=1 needs a query at q - d >= 0, but the tokens have 1 positions; allowed offsets are 0..0"),
    # ---- bad head/layer indices in path patching senders/receivers ------------------------------------------------
    case("path-sender-head", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 4), "logits", e.metric),
         ValueError, "sender (0, 4): use a head (layer, head) with layer < 2, head < 4; ('mlp', layer); or 'embed'"),
    case("path-sender-negative-head", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, -1), "logits", e.metric),
         ValueError, "sender (0, -1)"),
    case("path-sender-mlp-layer", lambda e: path_patching.path_patch(e.m, e.T, e.C, ("mlp", 2), "logits", e.metric),
         ValueError, "sender ('mlp', 2)"),
    case("path-sender-in-list", lambda e: path_patching.path_patch(e.m, e.T, e.C, [(0, 0), (9, 9)], "logits",
                                                                   e.metric), ValueError, "sender (9, 9)"),
    case("path-senders-sweep", lambda e: path_patching.path_patch_senders(e.m, e.T, e.C, "logits", e.metric,
                                                                          senders=[(0, 0), (5, 0)]), ValueError,
         "sender (5, 0)"),
    case("path-sender-list-not-tuple", lambda e: path_patching.path_patch(e.m, e.T, e.C, [0, 1], "logits", e.metric),
         ValueError, "sender 0: use a head (layer, head)"),
    case("path-receiver-head", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), ("q", 1, 4), e.metric),
         ValueError, "receiver ('q', 1, 4): use ('q'|'k'|'v', layer, head), ('mlp_in', layer) or 'logits' "
                     "(layer < 2, head < 4)"),
    case("path-receiver-layer", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), ("k", 2, 0), e.metric),
         ValueError, "receiver ('k', 2, 0)"),
    case("path-receiver-negative-head", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), ("v", 1, -1),
                                                                           e.metric),
         ValueError, "receiver ('v', 1, -1)"),
    case("path-receiver-mlp_in-layer", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), ("mlp_in", 2),
                                                                          e.metric), ValueError,
         "receiver ('mlp_in', 2)"),
    case("path-receiver-in-list", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), [("q", 1, 0), ("k", 1, 9)],
                                                                     e.metric), ValueError, "receiver ('k', 1, 9)"),
    case("path-receiver-head-tuple", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), (1, 0), e.metric),
         ValueError, "receiver (1, 0) is a head; say which of its inputs receives: ('q', 1, 0), ('k', 1, 0) or "
                     "('v', 1, 0), or a list of them (other receivers: ('mlp_in', layer) or 'logits'; layer < 2, "
                     "head < 4)"),
    case("path-receiver-head-in-list", lambda e: path_patching.path_patch_senders(e.m, e.T, e.C, [(1, 0)], e.metric),
         ValueError, "receiver (1, 0) is a head; say which of its inputs receives"),
    case("path-receivers-empty", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), [], e.metric), ValueError,
         "receivers: one or more q/k/v/mlp_in receivers, or 'logits' alone"),
    case("path-senders-empty", lambda e: path_patching.path_patch(e.m, e.T, e.C, [], "logits", e.metric), ValueError,
         "senders is empty: give at least one sender"),
    case("path-sender-after-receiver", lambda e: path_patching.path_patch(e.m, e.T, e.C, (1, 0), ("q", 0, 0),
         e.metric), ValueError, "sender (1, 0) has no path to receiver(s) ('q', 0, 0)"),
    case("path-sender-in-receiver-layer", lambda e: path_patching.path_patch(e.m, e.T, e.C, (1, 0), ("k", 1, 2),
         e.metric), ValueError, "sender (1, 0) has no path to receiver(s) ('k', 1, 2)"),
    case("path-head-to-itself", lambda e: path_patching.path_patch(e.m, e.T, e.C, (1, 2), ("v", 1, 2), e.metric),
         ValueError, "sender (1, 2) has no path"),
    case("path-mlp-to-own-mlp_in", lambda e: path_patching.path_patch(e.m, e.T, e.C, ("mlp", 0), ("mlp_in", 0),
         e.metric), ValueError, "sender ('mlp', 0) has no path to receiver(s) ('mlp_in', 0)"),
    case("path-direct-same-layer", lambda e: path_patching.direct_path_patch(e.m, e.T, e.C, (1, 0), ("q", 1, 2),
         e.metric), ValueError, "sender (1, 0) has no edge to receiver ('q', 1, 2)"),
    case("path-direct-sender-layer", lambda e: path_patching.direct_path_patch(e.m, e.T, e.C, (5, 0), ("q", 1, 0),
                                                                               e.metric), ValueError, "sender (5, 0)"),
    case("path-direct-receiver-logits", lambda e: path_patching.direct_path_patch(e.m, e.T, e.C, (0, 0), "logits",
                                                                                  e.metric), ValueError,
         "direct_path_patch receivers are ('q'|'k'|'v', layer, head)"),
    case("path-sender-typo", lambda e: path_patching.path_patch(e.m, e.T, e.C, "embd", "logits", e.metric),
         ValueError, "sender 'embd'"),
    case("path-receiver-typo", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), "logit", e.metric),
         ValueError, "receiver 'logit'"),
    case("path-receiver-float-layer", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), ("q", 1.0, 0),
                                                                         e.metric),
         ValueError, "receiver ('q', 1.0, 0)"),
    case("path-direct-sender-mlp", lambda e: path_patching.direct_path_patch(e.m, e.T, e.C, ("mlp", 0), ("q", 1, 0),
                                                                             e.metric), ValueError, "sender"),
    case("path-direct-sender-embed", lambda e: path_patching.direct_path_patch(e.m, e.T, e.C, "embed", ("q", 1, 0),
                                                                               e.metric), ValueError, "sender"),
    # ---- unknown or misspelled activation names (names_filter / fwd_hooks: test_model.py) -------------------------
    case("name-hooks-context-typo", lambda e: run_in_hooks_context(e.m, [("hook_embd", lambda x, h: None)], e.T),
         KeyError, "unknown activation point 'hook_embd'; did you mean hook_embed"),
    case("name-per-head-input-typo", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("blocks.0.hook_q_inpt",
                                                                                   lambda x, h: None)]),
         KeyError, "did you mean blocks.0.hook_q_input"),
    case("name-layer-out-of-range", lambda e: e.m.run_with_cache(e.T, names_filter=["blocks.2.attn.hook_z"]),
         KeyError, "unknown activation point 'blocks.2.attn.hook_z'; did you mean blocks.1.attn.hook_z"),
    case("name-shorthand-as-name", lambda e: e.m.run_with_cache(e.T, names_filter="resid_pre"), KeyError,
         "unknown activation point 'resid_pre'; see minitx.model.POINTS for the names"),
    case("name-patch-point", lambda e: patching.activation_patching(e.m, e.T, e.C, e.metric, point="resid_pr"),
         ValueError, "unknown patch point 'resid_pr'; allowed: resid_pre, resid_mid"),
    case("name-attribution-point", lambda e: attribution.attribution_patching(e.m, e.T, e.C, e.metric, points="zz"),
         ValueError, "unknown point 'zz'; allowed: z, q, k, v, pattern"),
    case("name-detect_head-pattern", lambda e: heads.detect_head(e.m, e.T, "previous_token"), ValueError,
         "unknown detection pattern 'previous_token'; allowed: previous_token_head"),
    case("name-get_act_name-layer-missing", lambda e: minitx.get_act_name("resid_pre"), ValueError,
         "shorthand 'resid_pre' needs a layer, e.g. get_act_name('resid_pre', 0)"),
    case("name-get_act_name-typo", lambda e: minitx.get_act_name("resid_pr", 0), KeyError, "did you mean resid_pre"),
    case("name-cache-typo", lambda e: e.m.run_with_cache(e.T)[1]["blocks.0.hook_resid_pr"], KeyError,
         "did you mean blocks.0.hook_resid_pre"),
    case("name-cache-layer", lambda e: e.m.run_with_cache(e.T)[1]["resid_pre", 7], KeyError, "layer"),
    case("name-cache-not-cached", lambda e: e.m.run_with_cache(e.T, names_filter="hook_embed")[1]
         ["blocks.0.hook_resid_pre"], KeyError, "names_filter"),
    case("name-detect_head-cache-without-patterns", lambda e: heads.detect_head(
        e.m, e.T, "previous_token_head", cache=e.m.run_with_cache(e.T, names_filter="hook_embed")[1]), KeyError,
         "cache"),
    case("name-names_filter-int", lambda e: e.m.run_with_cache(e.T, names_filter=3), TypeError, "names_filter"),
    case("name-fwd_hooks-not-pairs", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[lambda x, h: None]), TypeError,
         "(name, fn)"),
    case("name-hooks-context-not-pairs", lambda e: run_in_hooks_context(e.m, [("hook_embed",)], e.T), TypeError,
         "(name, fn)"),
    # ---- hook results of the wrong shape / dtype / device (shape, float64, str: test_model.py) --------------------
    case("hook-device", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("hook_embed", lambda x, h: x.to("meta"))]),
         ValueError, "hook on hook_embed returned shape (2, 5, 64), torch.float32 on meta; it must match the "
                     "activation: (2, 5, 64), torch.float32 on cpu"),
    case("hook-int-dtype", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("blocks.1.mlp.hook_post",
                                                                         lambda x, h: x.long())]),
         ValueError, "hook on blocks.1.mlp.hook_post returned shape (2, 5, 256), torch.int64"),
    case("hook-broadcastable-shape", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("hook_embed", lambda x, h: x[:1])]),
         ValueError, "returned shape (1, 5, 64), torch.float32 on cpu; it must match the activation: (2, 5, 64)"),
    case("hook-numpy", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("hook_embed", lambda x, h: x.numpy())]),
         TypeError, "hook on hook_embed returned ndarray; return a tensor of shape (2, 5, 64), or None"),
    case("hook-not-callable", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("hook_embed", 5)]), TypeError,
         "hook for 'hook_embed' must be callable as fn(activation, hook), got int"),
    case("hook-backward-without-grad", lambda e: e.m.run_with_hooks(e.T, bwd_hooks=[("hook_embed", lambda g, h: None)]),
         RuntimeError, "backward hook on hook_embed: no gradient flows through this point"),
    # ---- NaN/inf produced by a user hook, reported with the hook's name (resid_mid: test_model.py) ----------------
    case("nan-run_with_cache-per-head", lambda e: e.m.run_with_cache(e.T, fwd_hooks=[("blocks.1.attn.hook_z",
                                                                                      nan_noise)]),
         FloatingPointError, "hook on blocks.1.attn.hook_z returned NaN or inf values where the activation was finite"),
    case("nan-hooks-context", lambda e: run_in_hooks_context(e.m, [("hook_pos_embed", nan_noise)], e.T),
         FloatingPointError, "hook on hook_pos_embed returned NaN"),
    case("nan-on-request-point", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("blocks.0.hook_k_input", nan_noise)]),
         FloatingPointError, "hook on blocks.0.hook_k_input returned NaN"),
    case("nan-pattern", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("blocks.1.attn.hook_pattern", nan_noise)]),
         FloatingPointError, "hook on blocks.1.attn.hook_pattern returned NaN"),
    case("inf-resid", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("blocks.0.hook_resid_post",
                                                                    lambda x, h: x + float("inf"))]),
         FloatingPointError, "hook on blocks.0.hook_resid_post returned NaN or inf"),
    case("nan-corruption-hook-in-patching", lambda e: patching.activation_patching(
        e.m, e.T, patching.Corruption(e.C, (("hook_embed", nan_noise),)), e.metric), FloatingPointError,
         "hook on hook_embed returned NaN"),
    case("nan-in-place", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("blocks.0.hook_resid_mid", inplace_nan)]),
         FloatingPointError, "blocks.0.hook_resid_mid"),
    case("nan-zero-ln-scale", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=[("blocks.0.ln1.hook_scale",
                                                                            lambda x, h: torch.zeros_like(x))]),
         ValueError, "blocks.0.ln1.hook_scale"),
    # ---- bad metrics --------------------------------------------------------------------------------------------
    case("metric-scalar", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), "logits", lambda x: x.sum()),
         ValueError, "the metric must map logits [batch, pos, d_vocab] to [batch]=[2], got ()"),
    case("metric-float", lambda e: patching.activation_patching(e.m, e.T, e.C, lambda x: 1.0), ValueError,
         "to [batch]=[2], got float"),
    case("metric-nan", lambda e: patching.activation_patching(e.m, e.T, e.C, lambda x: x[:, -1, 0] * NAN), ValueError,
         "the metric returned nan for prompt 0 (2 of 2 prompts not finite)"),
    case("metric-nan-path", lambda e: path_patching.path_patch(e.m, e.T, e.C, (0, 0), "logits",
         lambda x: x[:, -1, 0] / 0 * 0), ValueError, "the metric returned nan"),
    case("metric-answer-float-tensor", lambda e: metrics.logit_diff(e.logits, torch.tensor([1.0, 2.0]), 3),
         ValueError, "answer as a tensor must be integer ids of shape [batch]=[2], got torch.float32 (2,)"),
    case("metric-kl_to-batch", lambda e: metrics.kl_to(e.logits)(e.logits[:1]), ValueError,
         "kl_to: logits at the read position are (1, 257) but the clean logits were (2, 257)"),
    case("metric-logits-2d", lambda e: metrics.logit_diff(e.logits[:, -1], 3, 5), ValueError,
         "logits must be [batch, pos, d_vocab], got (2, 257)"),
    case("patch-by", lambda e: patching.activation_patching(e.m, e.T, e.C, e.metric, by="head"), ValueError,
         "by='head': use 'pos' (per position) or 'all' (all positions at once)"),
    case("patch-head-missing", lambda e: patching.patch_one(e.m, e.T, e.C, "z", 0), ValueError,
         "z is per head: give head="),
    case("patch-corruption-hook-point", lambda e: patching.activation_patching(
        e.m, e.T, patching.Corruption(e.C, (("blocks.0.hook_resid_pre", nan_noise),)), e.metric), ValueError,
         "a corruption's hooks may touch only hook_embed/hook_pos_embed, not blocks.0.hook_resid_pre"),
    case("patch-resample-one-prompt", lambda e: patching.resample_ablation(e.T[:1]), ValueError,
         "resampling within the batch needs at least 2 prompts; pass reference_tokens"),
    case("patch-one-layer-bool", lambda e: patching.patch_one(e.m, e.T, e.C, "resid_pre", True), TypeError,
         "layer must be an int layer index"),
    case("patch-mean-ablation-batch-zero", lambda e: patching.mean_ablation(e.m, e.T, batch_size=0), ValueError,
         "batch_size=0: the most reference prompts one forward may hold, an int >= 1"),
    case("patch-gaussian-noise-no-positions", lambda e: patching.gaussian_noise_embeddings(e.m, e.T, []), ValueError,
         "positions is an empty list"),
    case("attribution-points-empty", lambda e: attribution.attribution_patching(e.m, e.T, e.C, e.metric, points=[]),
         ValueError, "points is empty"),
    case("attribution-compare-k-zero", lambda e: attribution.compare_with_patching(torch.ones(3), torch.ones(3), k=0),
         ValueError, "k=0: how many of the largest entries the top-k overlap compares, an int >= 1"),
    case("heads-repeated-n", lambda e: heads.repeated_tokens(257, 300, 1, 0, True), ValueError,
         "n=300 distinct tokens per half are not available: allowed 1..256"),
    # ---- issue 12, head scores and figures (H3) -----------------------------------------------------------------
    case("detect_head-cache-of-other-tokens", lambda e: heads.detect_head(
        e.m, e.T, "previous_token_head", cache=e.m.run_with_cache(e.C)[1]), ValueError,
         "the cache's patterns were not computed from these tokens"),
    case("detect_head-pattern-nan", lambda e: heads.detect_head(e.m, e.T, torch.full((5, 5), NAN).tril()),
         ValueError, "the detection pattern holds NaN or inf"),
    case("detect_head-pattern-str-list", lambda e: heads.detect_head(e.m, e.T, [["a"]]), TypeError,
         "detection must be a name"),
    case("role_swap-top-negative", lambda e: heads.role_swap(e.m, e.T, e.T, (1, 1), top=-1), ValueError,
         "top=-1: how many heads most_changed lists, an int >= 1"),
    case("induction-token_ids-empty", lambda e: heads.induction_scores(e.m, n=3, token_ids=[]), ValueError,
         "token_ids holds no id other than BOS"),
    case("induction-token_ids-outside", lambda e: heads.induction_scores(e.m, n=3, token_ids=[1, 999]), ValueError,
         "token_ids id 999 is outside the vocabulary; allowed ids are 0..256"),
    case("argmax_offset-min_offset-too-large", lambda e: heads.argmax_offset(torch.zeros(2, 4, 3), min_offset=5),
         ValueError, "min_offset=5 is not an offset of these scores; allowed 0..2"),
    case("induction-seed-none", lambda e: heads.induction_scores(e.m, n=3, seed=None), TypeError,
         "seed must be an int from 0 to 2**64-1, got NoneType None"),
    case("induction-seed-str", lambda e: heads.induction_scores(e.m, n=3, seed="a"), TypeError, "seed must be an int"),
    case("induction-seed-huge", lambda e: heads.induction_scores(e.m, n=3, seed=10 ** 23), ValueError,
         "seed=100000000000000000000000 is not allowed: an int from 0 to 2**64-1"),
    case("induction-batch-huge", lambda e: heads.induction_scores(e.m, n=3, batch=100_000_000), MemoryError,
         "scoring heads on 100000000 prompts of 7 tokens needs about"),
    case("plots-attention_grid-no-heads", lambda e: plots.attention_grid(torch.zeros(0, 3, 3), list("abc"), 0),
         ValueError, "attention_grid needs at least one head"),
    case("plots-save-dpi", lambda e: plots.save(plots.layer_head_grid(torch.zeros(2, 2), "z"), "x.png", dpi=10000),
         ValueError, "dpi=10000: a number from 1 to 600"),
    case("plots-save-missing-parents", lambda e: plots.save(plots.layer_head_grid(torch.zeros(2, 2), "z"),
                                                            "/nonexistent-minitx-dir/a/x.png"), FileNotFoundError,
         "cannot make the folder /nonexistent-minitx-dir/a: /nonexistent-minitx-dir does not exist"),
    # ---- issue 12: checkpoints, configs, files, the hub (H2) ---------------------------------------------------
    case("config-scale_attn_weights-string", lambda e: minitx.load(saved("s", {"scale_attn_weights": "false"})),
         ValueError, "config scale_attn_weights='false' is not allowed: true or false (a JSON boolean"),
    case("config-tie_word_embeddings-string", lambda e: minitx.load(saved("t", {"tie_word_embeddings": "false"})),
         ValueError, "config tie_word_embeddings='false' is not allowed: true or false"),
    case("config-epsilon-infinity", lambda e: minitx.load(saved("inf", {"layer_norm_epsilon": float("inf")})),
         ValueError, "config layer_norm_epsilon=inf is not allowed: a finite number > 0, such as 1e-5"),
    case("config-epsilon-string", lambda e: minitx.load(saved("eps-str", {"layer_norm_epsilon": "1e-5"})),
         ValueError, "config layer_norm_epsilon='1e-5' is not allowed: a finite number > 0"),
    case("config-epsilon-null", lambda e: minitx.load(saved("eps-null", {"layer_norm_epsilon": None})),
         ValueError, "config layer_norm_epsilon=None is not allowed: a finite number > 0"),
    case("config-bos-outside-vocab", lambda e: minitx.load(saved("bos20", {"bos_token_id": 20})), ValueError,
         "config bos_token_id=20 is not allowed: an id in the vocabulary 0..19"),
    case("config-bos-negative", lambda e: minitx.load(saved("bos-5", {"bos_token_id": -5})), ValueError,
         "config bos_token_id=-5 is not allowed"),
    case("config-bos-string", lambda e: minitx.load(saved("bos-x", {"bos_token_id": "x"})), ValueError,
         "config bos_token_id='x' is not allowed"),
    case("config-n_inner-bool", lambda e: minitx.load(saved("inner", {"n_inner": True})), ValueError,
         "config n_inner=True is not allowed: a positive integer or null"),
    case("config-n_layer-huge", lambda e: minitx.load(saved("layers", {"n_layer": 100000})), ValueError,
         "the config says n_layer=100000 but the checkpoint has tensors for 1 blocks (h.0 .. h.0)"),
    case("weights-nan", lambda e: minitx.load(saved("nan", tensors=weight(
        "transformer.h.0.mlp.c_fc.weight", lambda t: t[0].__setitem__(3, NAN)))), ValueError,
         "every weight must be finite, but 1 tensors hold NaN or inf: transformer.h.0.mlp.c_fc.weight (1 of 256)"),
    case("weights-inf-row", lambda e: minitx.load(saved("inf-row", tensors=weight(
        "transformer.wte.weight", lambda t: t[5].fill_(float("inf"))))), ValueError,
         "tensors hold NaN or inf: transformer.wte.weight (8 of 160)"),
    case("bin-zero-bytes", lambda e: minitx.load(with_bin("empty-bin", b"")), ValueError,
         "not a readable PyTorch checkpoint: the file is empty (0 bytes)"),
    case("bin-nested-state_dict", lambda e: minitx.load(with_bin("nested-bin", {"state_dict": {
        "wte.weight": torch.zeros(20, 8)}})), ValueError,
         "holds a nested dict under 'state_dict'; minitx reads a flat dict of tensor name -> tensor"),
    case("load-mistyped-local-path", lambda e: load_from(REPO, "weights/english-6"), FileNotFoundError,
         "'weights/english-6': no such local file or directory (the folder weights exists); did you mean "
         "weights/english-6l?"),
    case("load-device-nonsense", lambda e: minitx.load(saved("reference"), device="nonsense"), ValueError,
         "device 'nonsense' is not a torch device; use cpu, cuda, cuda:N or mps"),
    case("load-device-not-here", lambda e: minitx.load(saved("reference"), device="xla"), ValueError,
         "device xla: xla is not available here; use cpu"),
    case("load-device-meta", lambda e: minitx.load(saved("reference"), device="meta"), ValueError,
         "device meta: the meta device holds shapes only, no values; use cpu"),
    case("download-timeout-negative", lambda e: minitx.download("org/x", timeout=-1), ValueError,
         "timeout=-1 is not allowed: seconds to wait for the server, a number > 0"),
    case("download-timeout-zero", lambda e: minitx.download("org/x", timeout=0), ValueError, "timeout=0 is not"),
    case("download-retries-string", lambda e: minitx.download("org/x", retries="2"), ValueError,
         "retries='2' is not allowed: how often to retry a failed file, an int >= 0"),
    # ---- issue 12: forward, generate, hooks and caches (H2) ----------------------------------------------------
    case("forward-all-padding-row", lambda e: e.m(e.T, attention_mask=torch.tensor([[1] * 5, [0] * 5])),
         ValueError, "attention_mask row 1 has no real token"),
    case("forward-stop_at_layer-float", lambda e: e.m(e.T, stop_at_layer=1.5), TypeError,
         "stop_at_layer must be an int (a block index 0..2) or None, got float 1.5"),
    case("forward-resid-float64", lambda e: e.m(RESID.double(), start_at_layer=1), ValueError,
         "the input is a residual stream [batch, pos, 64], torch.float32 on cpu; got shape (2, 5, 64), torch.float64"),
    case("forward-resid-int", lambda e: e.m(RESID.long(), start_at_layer=1), ValueError,
         "got shape (2, 5, 64), torch.int64 on cpu"),
    case("forward-past_kv-shape", lambda e: e.m(RESID, start_at_layer=1, past_kv=[(torch.zeros(2, 3, 4, 8),) * 2]),
         ValueError, "past_kv: each block's (k, v) must be two torch.float32 tensors [batch=2, n_past, head=4, "
                     "d_head=16]"),
    case("forward-past_kv-int", lambda e: e.m(RESID, start_at_layer=1, past_kv=5), ValueError,
         "past_kv needs start_at_layer, no attention_mask, and one (k, v) per block run (1); got int 5"),
    case("generate-seed-str", lambda e: e.m.generate(e.T, 2, temperature=1.0, seed="a"), TypeError,
         "seed must be an int from 0 to 2**64-1, got str 'a'"),
    case("generate-max_new_tokens-float", lambda e: e.m.generate(e.T, 2.0), TypeError,
         "max_new_tokens must be an int >= 0, got float 2.0"),
    case("generate-max_new_tokens-str", lambda e: e.m.generate(e.T, "2"), TypeError,
         "max_new_tokens must be an int >= 0, got str '2'"),
    case("generate-top_k-float", lambda e: e.m.generate(e.T, 2, temperature=1.0, top_k=2.5), TypeError,
         "top_k must be a positive int or None, got float 2.5"),
    case("generate-temperature-str", lambda e: e.m.generate(e.T, 2, temperature="1"), TypeError,
         "temperature must be a number >= 0 (0 = greedy), got str '1'"),
    case("generate-eos-float", lambda e: e.m.generate(e.T, 2, eos_token_id=2.5), TypeError,
         "eos_token_id must be an int token id or None, got float 2.5"),
    case("generate-eos-bool", lambda e: e.m.generate(e.T, 2, eos_token_id=True), TypeError,
         "eos_token_id must be an int token id or None, got bool True"),
    case("tokens-meta", lambda e: e.m(torch.zeros(2, 5, dtype=torch.long, device="meta")), ValueError,
         "tokens must hold values, got a tensor on the meta device (shapes only)"),
    case("tokens-sparse", lambda e: e.m(e.T.to_sparse()), TypeError,
         "tokens must be a dense tensor, got layout torch.sparse_coo; use .to_dense()"),
    case("mask-meta", lambda e: e.m(e.T, attention_mask=torch.ones(2, 5, device="meta")), ValueError,
         "attention_mask must hold values, got a tensor on the meta device"),
    case("hooks-not-a-list", lambda e: e.m.run_with_hooks(e.T, fwd_hooks=inplace_nan), TypeError,
         "fwd_hooks must be a list of (name, fn) pairs, e.g. [('blocks.0.hook_resid_pre', fn)], or None; got function"),
    case("hooks-context-bwd-not-a-list", lambda e: e.m.hooks(bwd_hooks=5).__enter__(), TypeError,
         "bwd_hooks must be a list of (name, fn) pairs"),
    case("hooks-beyond-stop_at_layer", lambda e: e.m.run_with_hooks(e.T, stop_at_layer=1, fwd_hooks=[
        ("blocks.1.hook_resid_pre", nan_noise)]), ValueError, "no hook of this call can fire: blocks.1.hook_resid_pre "
                                                              "lie outside what it runs (blocks 0..0, no ln_final)"),
    case("hooks-embed-with-start_at_layer", lambda e: e.m.run_with_cache(RESID, start_at_layer=1, fwd_hooks=[
        ("hook_embed", nan_noise)]), ValueError, "hook_embed lie outside what it runs (blocks 1..1, no embedding)"),
    case("hooks-backward-before-start_at_layer", lambda e: e.m.run_with_hooks(RESID, start_at_layer=1, bwd_hooks=[
        ("blocks.0.hook_resid_post", nan_noise)]), ValueError, "no hook of this call can fire: blocks.0.hook_resid_post"),
    case("attribute-W_Q-on-a-block", lambda e: e.m.blocks[0].attn.W_Q, AttributeError,
         "Attention has no W_Q; the model has it: model.W_Q[layer]"),
    case("save_pretrained-onto-a-file", lambda e: minitx.save_pretrained(e.m, saved("reference") / "config.json"),
         FileExistsError, "config.json is a file; save_pretrained writes a folder (config.json and model.safetensors)"),
    case("tokenizer-to_str_tokens-none", lambda e: e.tok.to_str_tokens(None), TypeError,
         "to_str_tokens takes text or token ids (a list or a tensor), got NoneType"),
    case("cache-int-key", lambda e: cached(e)[5], TypeError,
         "a cache key is a point name ('blocks.0.hook_resid_pre') or a (shorthand, layer) tuple"),
    case("cache-head-as-third-element", lambda e: cached(e)["pattern", 0, 1], ValueError,
         "layer_type=1 is not allowed for 'pattern': it takes 'attn' or 'a'"),
    case("cache-layer-out-of-range", lambda e: cached(e)["pattern", -3], KeyError,
         "layer -3 is out of range for a model of 2 layers; allowed: -2..1"),
    case("get_act_name-negative-without-size", lambda e: minitx.get_act_name("resid_post", -1), ValueError,
         "layer -1 counts from the end, so it needs the model's size"),
    case("get_act_name-float-layer", lambda e: minitx.get_act_name("resid_post", 1.0), TypeError,
         "layer must be an int (negative counts from the end), got float 1.0"),
    case("tokenizer-lone-surrogate", lambda e: e.tok.to_tokens("a\ud800b", prepend_bos=False), ValueError,
         "the text holds a lone surrogate '\\ud800' at index 1"),
    case("tokenizer-encode-none", lambda e: e.tok.encode(None), TypeError, "text must be a str, got NoneType"),
    case("tokenizer-to_string-float", lambda e: e.tok.to_string(2.5), TypeError,
         "to_string takes token ids (an int, a list or a tensor), got float"),
    # ---- a TransformerLens user's port (H10) ---------------------------------------------------------------------
    case("cache-layer_type-of-another-sublayer", lambda e: cached(e)["pattern", 0, "mlp"], ValueError,
         "layer_type='mlp' is not allowed for 'pattern': it takes 'attn' or 'a'"),
    case("cache-shorthand-without-layer", lambda e: cached(e)["resid_pre"], KeyError,
         "'resid_pre' needs a layer: cache['resid_pre', 0] (or cache['resid_pre', -1] for the last layer)"),
    case("cache-transformer-lens-method", lambda e: cached(e).accumulated_resid, AttributeError,
         "Cache has no accumulated_resid (a TransformerLens name); in minitx: minitx.lens.logit_lens(model, tokens)"),
    case("model-transformer-lens-name", lambda e: e.m.OV, AttributeError,
         "Transformer has no OV (a TransformerLens name); in minitx: minitx.circuits.OV(model)"),
    case("tokenizer-byte-not-utf8", lambda e: e.tok.to_tokens("caf\udcc3", prepend_bos=False), ValueError,
         "the text is not valid UTF-8: byte 0xc3 at index 3 (a lone surrogate '\\udcc3'); give UTF-8 text"),
    case("download-endpoint-not-a-url", lambda e: minitx.download("org/absent-h10", endpoint="notaurl"), ValueError,
         "endpoint='notaurl' is not a hub address; give an http(s) URL such as https://huggingface.co"),
    case("run_with_hooks-return_type-loss", lambda e: e.m.run_with_hooks(e.T, return_type="loss"), TypeError,
         "run_with_hooks takes no return_type (a TransformerLens keyword); in minitx: the call returns logits; the loss "
         "is minitx.metrics.next_token_loss(logits, tokens)"),
    case("run_with_cache-remove_batch_dim", lambda e: e.m.run_with_cache(e.T, remove_batch_dim=True), TypeError,
         "run_with_cache takes no remove_batch_dim (a TransformerLens keyword); in minitx: index the batch"),
    case("model-reset_hooks", lambda e: e.m.reset_hooks(), AttributeError,
         "Transformer has no reset_hooks (a TransformerLens name); in minitx: none: hooks are per call"),
    case("load-shipped-name-typo", lambda e: minitx.load("english6l"), FileNotFoundError,
         "'english6l' is not a shipped model; did you mean 'english-6l'? (shipped: english-6l, induction-2l;"),
    # ---- issue 12 and issue 15: lenses (H8) ---------------------------------------------------------------------
    case("lens_table-batch-out-of-range", lambda e: plots.lens_table(lens.logit_lens(e.m, e.T), list("abcde"),
                                                                      batch=5), ValueError,
         "batch=5 is out of range: this lens result read 2 prompt(s), allowed -2..1"),
    case("read_lens-not-a-lens", lambda e: lens.read_lens(e.m, e.T), TypeError,
         "lens must be a minitx Lens (LogitLens, TunedLens, JacobianLens), got Transformer"),
    case("lens-layer-out-of-range", lambda e: lens.LogitLens(e.m)(e.logits, 7), ValueError,
         "the logit lens cannot read layer 7; it reads resid_pre of layers 0..1 and the final residual (layer 2)"),
    case("tuned-lens-incl-mid", lambda e: lens.read_lens(tuned_lens.TunedLens(e.m), e.T, incl_mid=True), ValueError,
         "incl_mid=True reads resid_mid, which only the logit lens can"),
    case("tuned-lens-no-steps", lambda e: tuned_lens.train_tuned_lens(e.m, iter([e.T])), ValueError,
         "token_batches has no length; give steps="),
    case("jacobian-lens-text-prompts", lambda e: jacobian_lens.fit_jacobian_lens(e.m, ["the cat"]), TypeError,
         "prompts must be token ids"),
    case("jacobian-lens-short-prompts", lambda e: jacobian_lens.fit_jacobian_lens(e.m, e.T), ValueError,
         "no prompt had more than 17 tokens, so nothing was fitted"),
    case("jacobian-lens-source-layer", lambda e: jacobian_lens.fit_jacobian_lens(e.m, e.T, source_layers=[1]),
         ValueError, "source_layers=[1]: a list of block outputs 0..0"),
    case("jacobian-lens-source-layer-not-a-list", lambda e: jacobian_lens.fit_jacobian_lens(e.m, e.T, source_layers=0),
         ValueError, "source_layers=0: a list of block outputs 0..0 (the last block's output is the target), at least one"),
    case("jacobian-lens-dim-batch-zero", lambda e: jacobian_lens.fit_jacobian_lens(e.m, e.T, dim_batch=0),
         ValueError, "dim_batch=0: output dimensions per backward pass, an int >= 1"),
    case("jacobian-lens-skip-first-negative", lambda e: jacobian_lens.fit_jacobian_lens(e.m, e.T, skip_first_positions=-1),
         ValueError, "skip_first_positions=-1: early positions left out as sources, an int >= 0"),
    # ---- issue 16 (HF): pairs of mixed token lengths. The library names its function; --pairs FILE (load_pairs,
    #      what every --pairs command runs) says what to do on the command line: tests/test_bad_inputs.py's
    #      test_cli_pairs_of_mixed_lengths_say_how_to_split_the_file runs the commands. -----------------------------
    case("to_batch-mixed-lengths", lambda e: datasets.to_batch(datasets.read_jsonl(pairs_file("mixed", MIXED_LENGTHS)),
                                                                e.tok, True), ValueError,
         "the pairs have 2 different lengths (13, 14 tokens); use to_batches to group them by length"),
    case("load_pairs-mixed-lengths", lambda e: datasets.load_pairs(pairs_file("mixed", MIXED_LENGTHS), e.tok, True),
         ValueError, "the pairs have 2 token lengths: 13 tokens in 1 pair, e.g. 'The cat chased the dog. The one who "
                     "chased was the'; 14 tokens in 2 pairs, e.g. 'The cat chased the dog. The one who was chased was "
                     "the'. The prompts are compared position by position, so keep pairs of one token length per file "
                     "(split this one by length) and run the command once per file"),
]


@pytest.mark.parametrize("call, exc, fragment", CASES)
def test_bad_input(env, call, exc, fragment):
    before, clean = checksum(env.m), env.m(env.T)
    with pytest.raises(exc) as info:
        call(env)
    message = info.value.args[0] if isinstance(info.value, KeyError) else str(info.value)
    assert fragment in message, message
    assert len(message.strip().splitlines()) <= 2, message  # one or two lines
    # Nothing half-patched: no hook outlives the call, no weight changed, the next forward is the clean one.
    assert not env.m.has_context_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in env.m.modules())
    assert checksum(env.m) == before
    assert torch.equal(env.m(env.T), clean)


# ---------------------------------------------------------------------------------------------------------------
# The command line: exit code 2 and exactly one line on stderr, no traceback. Cases already in
# tests/test_cli.py::test_bad_inputs_give_one_line_and_exit_2 / ::test_usage_errors_and_missing_model are not repeated.

PAIR = ["--clean", "1 2 3 4", "--corrupted", "1 5 3 4", "--answer", "3", "--wrong", "5"]
LATE = "a progress line is printed on stderr before this argument is checked, so the error is the second line"


def cli_case(id, argv, fragment, unclear=None):
    marks = [pytest.mark.xfail(strict=True, reason=unclear)] if unclear else []
    return pytest.param(argv, fragment, id=id, marks=marks)


CLI_CASES = [
    cli_case("attention-negative-layer", ["attention", "--prompt", "1 2 3", "--layer", "-1"],
             "minitx attention: error: --layer -1 is out of range; this model has layers 0..1"),
    cli_case("attention-layer-not-int", ["attention", "--prompt", "1 2", "--layer", "x"],
             "minitx attention: error: argument --layer: invalid int value: 'x' (see minitx attention --help)"),
    cli_case("attention-too-long", ["attention", "--prompt", " ".join(["1"] * 20), "--layer", "0"],
             "minitx attention: error: the sequence reaches position 20, but this model has n_positions=16"),
    cli_case("heads-n-too-large", ["heads", "--n", "30"],
             "minitx heads: error: --n 30: allowed --n 1..7 (19 distinct ids to draw r from; [BOS] + r + r must "
             "fit n_positions=16)"),
    cli_case("heads-n-zero", ["heads", "--n", "0"], "--n 0: allowed --n 1..7"),
    cli_case("heads-one-token-prompt", ["heads", "--n", "3", "--prompt", "5", "--no-prepend-bos"],
             "minitx heads: error: the prompt needs at least 2 tokens to score heads"),
    cli_case("heads-n-exceeds-positions", ["heads", "--n", "8"],
             "minitx heads: error: --n 8: allowed --n 1..7 (19 distinct ids to draw r from; [BOS] + r + r must "
             "fit n_positions=16)"),
    cli_case("heads-batch-zero", ["heads", "--n", "3", "--batch", "0"],
             "minitx heads: error: --batch=0: random sequences the scores average over, an int >= 1"),
    cli_case("heads-batch-negative", ["heads", "--n", "3", "--prompt", "1 2 3", "--batch", "-2"],
             "minitx heads: error: --batch=-2: random sequences the scores average over, an int >= 1"),
    cli_case("heads-negative-max-offset", ["heads", "--n", "3", "--max-offset", "-1"], "max_offset=-1"),
    cli_case("patch-answer-out-of-vocab", ["patch", *PAIR[:4], "--answer", "30", "--wrong", "5"],
             "minitx patch: error: --answer: token id 30 is outside the vocabulary; allowed ids are 0..19"),
    cli_case("patch-point-typo", ["patch", *PAIR, "--point", "resid_pr"],
             "minitx patch: error: argument --point: invalid choice: 'resid_pr'"),
    cli_case("patch-pos", ["patch", *PAIR, "--pos", "9"], "position 9 is out of range"),
    cli_case("patch-pattern-by-pos", ["patch", *PAIR, "--point", "pattern", "--by", "pos"],
             "per-destination is not implemented"),
    cli_case("patch-too-long", ["patch", "--clean", " ".join(["1"] * 20), "--corrupted", " ".join(["2"] * 20),
                                "--answer", "3", "--wrong", "5"], "n_positions=16"),
    cli_case("patch-answer-is-wrong", ["patch", *PAIR[:6], "--wrong", "3"],
             "minitx patch: error: --answer and --wrong are the same token (3)"),
    cli_case("path-patch-receiver-head", ["path-patch", *PAIR, "--receiver", "k:1.9"],
             "minitx path-patch: error: receiver head 9 is out of range; this model has heads 0..3"),
    cli_case("path-patch-receiver-without-head", ["path-patch", *PAIR, "--receiver", "q:1"],
             "--receiver 'q:1': use logits, q:L.H, k:L.H, v:L.H (e.g. k:1.0) or mlp_in:L"),
    cli_case("path-patch-lengths", ["path-patch", "--clean", "1 2 3 4", "--corrupted", "1 5 3", "--answer", "3",
                                    "--wrong", "5", "--receiver", "logits"],
             "clean has 5 tokens, corrupted 4. Over the first 4 positions tokens differ at [2]"),
    cli_case("path-patch-pos", ["path-patch", *PAIR, "--pos", "-9", "--receiver", "logits"],
             "position -9 is out of range"),
    cli_case("lens-target-out-of-vocab", ["lens", "--prompt", "1 2 3", "--target", "25"],
             "minitx lens: error: --target: token id 25 is outside the vocabulary; allowed ids are 0..19"),
    cli_case("lens-target-two-ids", ["lens", "--prompt", "1 2 3", "--target", "2 3"],
             "--target '2 3' must be exactly one token id, got 2"),
    cli_case("demo-n-one", ["demo", "--n", "1"],
             "minitx demo: error: --n=1: random ids per copy in the induction tour, an int >= 2"),
    cli_case("device-not-here", ["lens", "1 2", "--device", "xla"],
             "minitx lens: error: --device xla: xla is not available here; use cpu"),
    cli_case("demo-n-pairs-two", ["demo", "--n-pairs", "2"],
             "minitx demo: error: --n-pairs=2: prompt pairs per dataset (fewer leave every verdict \"too few prompts\"), "
             "an int >= 8"),
    cli_case("unknown-command", ["nope"], "minitx: error: argument command: invalid choice: 'nope'"),
    # ---- issue 12 (H3) ------------------------------------------------------------------------------------------
    cli_case("heads-batch-huge", ["heads", "--n", "3", "--batch", "100000000"],
             "minitx heads: error: scoring heads on 100000000 prompts of 7 tokens needs about"),
    cli_case("heads-seed-overflow", ["heads", "--seed", "99999999999999999999999"],
             "argument --seed: invalid seed '99999999999999999999999': an int from 0 to 2**64-1"),
    cli_case("generate-seed-negative", ["generate", "1 2", "--seed", "-1"], "argument --seed: invalid seed '-1'"),
    cli_case("lens-prompt-twice", ["lens", "1 2", "--prompt", "3 4"],
             "minitx lens: error: prompt given twice ('1 2' and --prompt '3 4'); give it once"),
    cli_case("lens-prompt-missing", ["lens"], "minitx lens: error: the following arguments are required: prompt"),
    cli_case("path-patch-sender", ["path-patch", *PAIR, "--receiver", "logits", "--sender", "0.9"],
             "minitx path-patch: error: sender head 9 is out of range; this model has heads 0..3"),
    cli_case("demo-out-foreign-folder", ["demo", "--out", ".."],
             "already holds files that minitx demo did not write"),
    cli_case("demo-out-missing-parent", ["demo", "--out", "no/such/folder"],
             "cannot make the folder /"),
    cli_case("unknown-option-names-the-command", ["role-swap", "1 2", "--clean", "1 3"],
             "minitx role-swap: error: unrecognized arguments: --clean 1 3 (see minitx role-swap --help)"),
    cli_case("generate-too-many-new-tokens", ["generate", "1 2", "--max-new-tokens", "20"],
             "minitx generate: error: 2 prompt tokens + 20 new ones exceed n_positions=16; allowed: max_new_tokens 0..14"),
    cli_case("view-out-folder", ["view", "--prompt", "1 2", "--out", "."],
             "minitx view: error: --out . is a folder; give a file name such as view.html"),
    cli_case("dla-answer-is-wrong", ["dla", "1 2 3", "--answer", "3", "--wrong", "3"],
             "minitx dla: error: --answer and --wrong are the same token (3), so the logit difference is always 0"),
    cli_case("lens-path-with-logit-lens", ["lens", "1 2", "--lens-path", "x"],
             "minitx lens: error: --lens-path is a tuned or Jacobian lens file; give --lens tuned or --lens jacobian"),
    cli_case("attention-out-missing-parents", ["attention", "1 2", "--layer", "0", "--out", "no/such/a.png"],
             "minitx attention: error: cannot make the folder no/such: no does not exist; create it first"),
]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """2 layers x 4 heads, 20 ids (BOS 19), 16 positions: prompts are ids."""
    path = tmp_path_factory.mktemp("cli") / "model"
    minitx.save_pretrained(random_model(n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=20,
                                        bos_token_id=19), path)
    return str(path)


@pytest.mark.parametrize("argv, fragment", CLI_CASES)
def test_bad_cli_input(cli_model, tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    extra = ["--model", cli_model] if argv[0] != "nope" else []
    code = cli.main([argv[0], *extra, *argv[1:]])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert not list(tmp_path.glob("*.png"))  # nothing written


def test_cli_identical_prompts_show_no_library_source(cli_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.main(["patch", "--model", cli_model, "--clean", "1 2 3 4", "--corrupted", "1 2 3 4", "--answer", "3",
                  "--wrong", "5"])
    _, err = capsys.readouterr()
    # Python would print each escaped warning as "minitx/patching.py:307: RuntimeWarning: ..." plus a source line.
    assert not [w for w in caught if "minitx" in w.filename], [str(w.message) for w in caught]
    assert ".py" not in err, err


def test_cli_error_through_the_real_entry_point(cli_model, tmp_path):
    """The same contract from a separate process, as a user runs it: exit 2, one stderr line, no traceback."""
    result = subprocess.run([sys.executable, "-m", "minitx.cli", "patch", "--model", cli_model, *PAIR[:2],
                             "--corrupted", "1 5 3", *PAIR[4:]], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert re.fullmatch(r"minitx patch: error: clean and corrupted prompts must have the same length .*\n",
                        result.stderr), result.stderr


@pytest.mark.parametrize("command", [["circuit", "--method", "eap"], ["patch"], ["demo"]])
def test_cli_pairs_of_mixed_lengths_say_how_to_split_the_file(tmp_path, capsys, monkeypatch, command):
    """Issue 16's trial: `minitx circuit --pairs FILE` with pairs of two token lengths answered 'use to_batches to
    group them by length', a Python function a command-line user cannot call. Every --pairs command now names each
    length with its pair count and says to keep one length per file; nothing is printed or written before it."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in MIXED_LENGTHS))
    code = cli.main([*command, "--pairs", str(path), "--model", "english-6l", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and "Traceback" not in err
    line, = err.strip().splitlines()
    assert line.startswith(f"minitx {command[0]}: error: --pairs {path}: the pairs have 2 token lengths: 13 tokens in 1 "
                           "pair, e.g. 'The cat chased the dog. The one who chased was the'; 14 tokens in 2 pairs"), line
    assert "keep pairs of one token length per file" in line and "to_batches" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]  # no figure, no report folder


# ---------------------------------------------------------------------------------------------------------------
# docs/bad-inputs.md, written by scripts/regen_bad_inputs_doc.py from the two tables above.

def test_doc_regenerates_unchanged(tmp_path):
    """Regenerating a copy of docs/bad-inputs.md twice writes the same file: no temporary folder (the CLI rows'
    working folder is written <cwd>) or memory address in it; and it holds one row for each row of both tables."""
    doc, scratch = tmp_path / "bad-inputs.md", tmp_path / "tmp"
    doc.write_text((REPO / "docs/bad-inputs.md").read_text())
    scratch.mkdir()
    texts = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "scripts/regen_bad_inputs_doc.py", str(doc)], cwd=REPO,
                                capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)})
        assert result.returncode == 0, result.stderr[-2000:]
        texts.append(doc.read_text())
    assert texts[1] == texts[0]
    assert str(scratch) not in texts[0] and not re.search(r" at 0x[0-9a-f]+", texts[0])
    assert "cannot make the folder <cwd>/no/such/folder: <cwd>/no/such does not exist" in texts[0]
    assert not list(scratch.iterdir())  # the CLI rows' folder and saved()'s folders are removed
    rows = re.findall(r"^\|.*`tests/test_bad_inputs\.py::(test_bad_input|test_bad_cli_input)\[([^\]]+)\]` \|$",
                      texts[0], flags=re.M)
    assert sorted(rows) == sorted([("test_bad_input", p.id) for p in CASES]
                                  + [("test_bad_cli_input", p.id) for p in CLI_CASES])
