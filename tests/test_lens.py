"""Logit lens: the final entry is the model, metrics on a hand-made distribution, parity with HF hidden states."""

import math

import pytest
import torch
from torch.testing import assert_close

import minitx
from tests.conftest import random_model, unchanged
from minitx import lens


@pytest.fixture
def model():
    return random_model()


def test_final_entry_is_the_model(model):
    tokens = torch.randint(0, 256, (2, 9))
    with unchanged(model):
        result = lens.logit_lens(model, tokens, targets="next", positions=range(8))
        full = lens.logit_lens(model, tokens, incl_mid=True)
        logits = model(tokens)
    assert result.labels == ["0_pre", "1_pre", "final"]
    assert full.labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final"]
    assert torch.equal(full.logits[-1], logits)  # exactly: the lens is the model's own unembed
    assert torch.equal(full.kl_to_final[-1], torch.zeros(2, 9))
    assert result.logits.shape == (3, 2, 8, 257) and result.target_ranks.shape == (3, 2, 8)
    assert_close(result.logits, full.logits[[0, 2, 4]][:, :, :8], atol=1e-5, rtol=1e-5)
    assert_close(result.target_probs[-1], logits[:, :8].softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0])
    assert (full.kl_to_final[:-1] > 0).all()
    last = lens.logit_lens(model, tokens, targets=torch.tensor([[3], [4]]), positions=-1)
    assert last.positions.tolist() == [8]
    assert_close(last.logits[-1, :, 0], logits[:, -1], atol=1e-6, rtol=1e-6)  # fewer rows: matmul rounding


def test_metrics_on_hand_made_distribution():
    p_final = torch.tensor([0.5, 0.25, 0.125, 0.125])
    logits = torch.stack([torch.zeros(4), torch.tensor([1.0, 3.0, 3.0, 0.0]), p_final.log()])[:, None, None]
    targets = torch.tensor([[0]])
    result = lens.summarize_lens(logits, targets, top_k=2)  # [3 layers, batch 1, pos 1, 4]
    ln2 = math.log(2)
    h_final = 1.75 * ln2  # -sum p log p
    assert_close(result.entropy[:, 0, 0], torch.tensor([2 * ln2, result.entropy[1, 0, 0].item(), h_final]))
    assert_close(result.kl_to_final[0, 0, 0], torch.tensor(2 * ln2 - h_final))  # KL(p || uniform) = log V - H(p)
    tie = logits[1, 0, 0].log_softmax(-1)
    assert_close(result.kl_to_final[1, 0, 0], (p_final * (p_final.log() - tie)).sum())
    assert_close(result.kl_to_final[2], torch.zeros(1, 1))
    # Rank: ids with a strictly larger logit. Uniform: everyone ties at 0; [1, 3, 3, 0]: token 0 has two above.
    assert result.target_ranks[:, 0, 0].tolist() == [0, 2, 0]
    ranks = lens.summarize_lens(logits[1:2].expand(1, 1, 4, 4), torch.arange(4)[None]).target_ranks
    assert ranks[0, 0].tolist() == [2, 0, 0, 3]
    assert result.top_tokens[2, 0, 0].tolist() == [0, 1]
    assert_close(result.top_probs[2, 0, 0], torch.tensor([0.5, 0.25]))
    assert_close(result.target_probs[:, 0, 0], torch.tensor([0.25, tie[0].exp().item(), 0.5]))


def test_cached_scale_lens_is_a_different_function(model):
    tokens = torch.randint(0, 256, (2, 7))
    with unchanged(model):
        old = lens.cached_scale_lens(model, tokens)
        new = lens.logit_lens(model, tokens).logits
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre", "ln_final.hook_scale"])
    assert_close(old[-1], new[-1], atol=1e-5, rtol=1e-5)  # both are the model at the final residual ...
    assert not torch.allclose(old[0], new[0], atol=1e-3)  # ... but not earlier
    h = cache["resid_pre", 0]
    expected = (h - h.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"] * model.ln_final.w + model.ln_final.b
    assert_close(old[0], expected @ model.W_U)


def test_errors(model):
    tokens = torch.randint(0, 256, (1, 5))
    with pytest.raises(ValueError, match="no next token at position 4"):
        lens.logit_lens(model, tokens, targets="next")
    with pytest.raises(ValueError, match="position 5 is out of range for prompts of 5 tokens; allowed: -5..4"):
        lens.logit_lens(model, tokens, positions=[0, 5])


def hf_twin(seed=0):
    """A random HF GPT-2 and a minitx model with the same weights, copied by hand (Conv1D is [in, out])."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=4, n_embd=64, n_positions=32, vocab_size=257)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, attn_implementation="eager")).eval()
    with torch.no_grad():
        for param in hf.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
    model = minitx.Transformer(minitx.Config(**cfg))
    sd, t = {}, hf.transformer
    sd["W_E"], sd["W_pos"] = t.wte.weight, t.wpe.weight
    sd["ln_final.w"], sd["ln_final.b"] = t.ln_f.weight, t.ln_f.bias
    for l, block in enumerate(t.h):
        p = f"blocks.{l}."
        sd[p + "ln1.w"], sd[p + "ln1.b"] = block.ln_1.weight, block.ln_1.bias
        sd[p + "attn.W_QKV"], sd[p + "attn.b_QKV"] = block.attn.c_attn.weight, block.attn.c_attn.bias
        sd[p + "attn.W_O"], sd[p + "attn.b_O"] = block.attn.c_proj.weight, block.attn.c_proj.bias
        sd[p + "ln2.w"], sd[p + "ln2.b"] = block.ln_2.weight, block.ln_2.bias
        sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = block.mlp.c_fc.weight, block.mlp.c_fc.bias
        sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = block.mlp.c_proj.weight, block.mlp.c_proj.bias
    model.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=True)
    return hf, model.eval().requires_grad_(False)


def test_lens_matches_hf_hidden_states():
    hf, model = hf_twin()
    tokens = torch.randint(0, 257, (2, 11))
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
        result = lens.logit_lens(model, tokens)
        for i in range(model.cfg.n_layer):  # hidden_states[i] is the input to block i
            assert_close(result.logits[i], hf.lm_head(hf.transformer.ln_f(out.hidden_states[i])), atol=1e-4, rtol=1e-4)
        # The last hidden state is already through ln_f: the lens on it is lm_head alone, not ln_f again.
        assert_close(result.logits[-1], out.logits, atol=1e-4, rtol=1e-4)
        assert_close(result.logits[-1], hf.lm_head(out.hidden_states[-1]), atol=1e-4, rtol=1e-4)
