"""Parity: the same random weights through transformers' GPT-2 (eager attention) and minitx."""

import pytest
import torch
from torch.testing import assert_close

import minitx

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=300),
    "three-heads": dict(n_layer=3, n_head=3, n_embd=48, n_positions=64, vocab_size=300, activation_function="relu"),
    "stanford-flags": dict(n_layer=3, n_head=4, n_embd=64, n_positions=64, vocab_size=300, n_inner=100,
                           scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257),
}


def make_pair(tmp_path, seed=0, **cfg):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**cfg, attn_implementation="eager", bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random biases and layer-norm gains, so every term of the forward matters
        for name, param in hf.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
    hf.save_pretrained(tmp_path)
    return hf, minitx.load(str(tmp_path))


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp(request.param), **CONFIGS[request.param])


def test_logits_hidden_states_and_patterns(pair):
    hf, model = pair
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 17))
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(tokens)
    assert_close(logits, out.logits, atol=1e-4, rtol=1e-4)
    for layer in range(model.cfg.n_layer):  # HF's hidden_states[l] is the input to block l ...
        assert_close(cache["resid_pre", layer], out.hidden_states[layer], atol=1e-4, rtol=1e-4)
        assert_close(cache["pattern", layer], out.attentions[layer], atol=1e-5, rtol=1e-4)
    # ... and its last entry is already through ln_f.
    assert_close(cache["ln_final.hook_normalized"], out.hidden_states[-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch(pair, side):
    hf, model = pair
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 12))
    mask = torch.ones_like(tokens)
    if side == "left":
        mask[0, :4], mask[2, :1] = 0, 0
    else:
        mask[0, 8:], mask[2, 11:] = 0, 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # HF's generate derives positions this way
    with torch.no_grad():
        expected = hf(tokens, attention_mask=mask, position_ids=positions).logits
        logits = model(tokens, attention_mask=mask)
    real = mask.bool()
    assert_close(logits[real], expected[real], atol=1e-4, rtol=1e-4)
    # A padded prompt gives the logits it gives alone.
    row = tokens[0][real[0]]
    with torch.no_grad():
        alone = model(row[None])
    assert_close(logits[0][real[0]], alone[0], atol=1e-4, rtol=1e-4)


def test_greedy_generation_matches(pair):
    hf, model = pair
    prompt = torch.randint(0, model.cfg.d_vocab, (2, 6))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0  # left-padded second row
    kwargs = dict(max_new_tokens=20, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=mask, **kwargs)
    assert torch.equal(model.generate(prompt, 20, attention_mask=mask), expected)
    with torch.no_grad():
        expected = hf.generate(prompt[:1], **kwargs)
    assert torch.equal(model.generate(prompt[:1], 20), expected)


def test_fast_attention_path_equals_explicit_path(pair):
    _, model = pair
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 15))
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    with torch.no_grad():
        fast = model(tokens, attention_mask=mask)  # sdpa: nobody asked for a pattern
        explicit, _ = model.run_with_cache(tokens, attention_mask=mask, names_filter=lambda n: "pattern" in n)
    assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


def test_bfloat16_runs_close_to_float32(pair):
    _, model = pair
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 10))
    with torch.no_grad():
        reference = model(tokens)
        low = model.to(torch.bfloat16)(tokens).float()
    model.to(torch.float32)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    assert (low - reference).abs().max() < 0.1 * reference.abs().max() + 0.1
