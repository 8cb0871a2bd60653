"""Property tests (hypothesis) on random small GPT-2s: parity with transformers, caches, self-patching, batches.

Bounded so the file stays well under a minute on one CPU thread: few examples, no deadline, no example
database (nothing is written into the tree), and derandomized, so CI sees the same examples each run.
To explore further locally: MINITX_HYPOTHESIS_EXAMPLES=200 pytest tests/test_properties.py.

1. Logit parity with transformers' GPT2LMHeadModel (eager attention) after HF save_pretrained ->
   minitx.load, over layers 1-3, heads 1-4 (3 included), widths, positions, every activation function
   both libraries know, scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn, scale_attn_weights,
   tied and untied unembeddings.
2. Caching any subset of points gives the entries of the full cache.
3. Patching any subset of points with the run's own cached values changes nothing (replacing ln1.* of
   a layer together with that layer's per-head inputs is the documented error, checked when drawn).
4. A prompt's logits do not depend on the rest of its batch (equal lengths, or padded left or right
   with an attention mask), and repeating a run on CPU is bitwise identical.
"""

import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import minitx
from minitx.activations import ACTIVATIONS
from minitx.model import point_names
from tests.conftest import random_model

transformers = pytest.importorskip("transformers")
from transformers.activations import ACT2FN  # noqa: E402

ACTIVATION_NAMES = sorted(set(ACTIVATIONS) & set(ACT2FN))
EXTRA = int(os.environ.get("MINITX_HYPOTHESIS_EXAMPLES", "0"))
PARITY = dict(atol=1e-4, rtol=1e-4)
FLOAT = dict(atol=1e-5, rtol=1e-5)


def bounded(n: int):
    return settings(max_examples=EXTRA or n, deadline=None, database=None, derandomize=not EXTRA,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def configs(draw, parity: bool = False) -> dict:
    """A small GPT-2 config as HF's config.json spells it."""
    n_head = draw(st.integers(1, 4))
    cfg = dict(n_layer=draw(st.integers(1, 3)), n_head=n_head, n_embd=n_head * draw(st.sampled_from([2, 4, 8])),
               n_positions=draw(st.integers(4, 16)), vocab_size=draw(st.integers(5, 40)),
               n_inner=draw(st.none() | st.integers(3, 24)),
               activation_function=draw(st.sampled_from(ACTIVATION_NAMES)),
               scale_attn_by_inverse_layer_idx=draw(st.booleans()), reorder_and_upcast_attn=draw(st.booleans()),
               tie_word_embeddings=draw(st.booleans()))
    if parity:
        cfg.update(scale_attn_weights=draw(st.booleans()),
                   layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-3, 0.1])))
    return cfg


def small_model(draw) -> minitx.Transformer:
    cfg = draw(configs())
    return random_model(draw(st.integers(0, 1000)), bos_token_id=0, **cfg)


def tokens_for(draw, model, batch=None, length=None) -> torch.Tensor:
    cfg = model.cfg
    batch = batch or draw(st.integers(1, 3))
    length = length or draw(st.integers(1, cfg.n_ctx))
    seed = draw(st.integers(0, 2 ** 16))
    return torch.randint(0, cfg.d_vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- 1. parity with transformers ---------------------------------------------------------------------------------
@bounded(30)
@given(cfg=configs(parity=True), seed=st.integers(0, 2 ** 16))
def test_logit_parity_with_transformers_after_a_checkpoint_round_trip(cfg, seed):
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, bos_token_id=0, eos_token_id=0,
                                                              attn_implementation="eager")).eval()
    with torch.no_grad():  # weights of std 0.1 and random biases / LN gains, so every term matters
        for param in hf.parameters():
            param.copy_(torch.randn_like(param) * 0.1 + (1.0 if param.dim() == 1 and param.mean() == 1 else 0.0))
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = minitx.load(directory)
    tokens = torch.randint(0, cfg["vocab_size"], (2, cfg["n_positions"]),
                           generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = hf(tokens).logits
    assert_close(ours(tokens), expected, **PARITY)


# ---- 2. any subset of points, cached, equals the full cache ------------------------------------------------------
@bounded(40)
@given(data=st.data())
def test_cached_subsets_equal_the_full_cache(data):
    model = small_model(data.draw)
    tokens = tokens_for(data.draw, model)
    names = point_names(model.cfg.n_layer)
    full_logits, full = model.run_with_cache(tokens, names_filter=lambda n: True)
    subset = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=12))
    logits, cache = model.run_with_cache(tokens, names_filter=subset)
    assert set(cache) == set(subset)
    for name in subset:
        assert_close(cache[name], full[name], **FLOAT, msg=name)
    assert_close(logits, full_logits, **FLOAT)
    assert_close(logits, model(tokens), **FLOAT)


# ---- 3. patching with one's own cached activations is a no-op ----------------------------------------------------
def ln1_conflicts(subset) -> list[str]:
    """ln1.* points of layers whose per-head q/k/v inputs are also in the subset."""
    layers = {n.split(".")[1] for n in subset if n.endswith(("hook_q_input", "hook_k_input", "hook_v_input"))}
    return [n for n in subset if ".ln1." in n and n.split(".")[1] in layers]


@bounded(50)
@given(data=st.data())
def test_patching_with_own_cache_is_a_no_op(data):
    model = small_model(data.draw)
    tokens = tokens_for(data.draw, model)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: True)
    subset = data.draw(st.lists(st.sampled_from(point_names(model.cfg.n_layer)), unique=True, min_size=1))
    conflicts = ln1_conflicts(subset)
    if conflicts and data.draw(st.booleans(), label="keep the conflicting ln1 points"):
        hooks = [(name, lambda x, hook: cache[hook.name]) for name in subset]
        with pytest.raises(ValueError, match="per-head inputs"):  # the documented error
            model.run_with_hooks(tokens, fwd_hooks=hooks)
        event("ln1 with per-head inputs: the documented error")
        return
    subset = [n for n in subset if n not in conflicts]
    hooks = [(name, lambda x, hook: cache[hook.name]) for name in subset]
    event(f"patched {'some' if len(subset) < 8 else 'many'} points")
    assert_close(model.run_with_hooks(tokens, fwd_hooks=hooks), logits, **FLOAT)
    assert not model.has_context_hooks


# ---- 4. batch independence and bitwise repeatability -------------------------------------------------------------
@bounded(50)
@given(data=st.data())
def test_logits_do_not_depend_on_the_rest_of_the_batch(data):
    model = small_model(data.draw)
    n_ctx, vocab = model.cfg.n_ctx, model.cfg.d_vocab
    padding = data.draw(st.sampled_from([None, "left", "right"]))
    if padding is None:
        tokens = tokens_for(data.draw, model, batch=data.draw(st.integers(2, 4)))
        prompts, mask = list(tokens), None
    else:
        lengths = data.draw(st.lists(st.integers(1, n_ctx), min_size=2, max_size=4))
        prompts = [tokens_for(data.draw, model, batch=1, length=n)[0] for n in lengths]
        pad = data.draw(st.integers(0, vocab - 1))
        width = max(lengths)
        tokens = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for i, p in enumerate(prompts):
            span = slice(0, len(p)) if padding == "right" else slice(width - len(p), width)
            tokens[i, span], mask[i, span] = p, 1
    event(f"padding: {padding}")
    batched = model(tokens, attention_mask=mask)
    for i, prompt in enumerate(prompts):
        alone = model(prompt[None])[0]
        real = slice(None) if mask is None else mask[i].bool()
        assert_close(batched[i, real], alone, **FLOAT, msg=f"prompt {i} ({padding} padding)")
    assert torch.equal(model(tokens, attention_mask=mask), batched)  # bitwise repeatable on CPU
    _, cache_a = model.run_with_cache(tokens, attention_mask=mask)
    _, cache_b = model.run_with_cache(tokens, attention_mask=mask)
    assert all(torch.equal(cache_a[n], cache_b[n]) for n in cache_a)
