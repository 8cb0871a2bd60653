"""Residual decomposition and DLA: the pieces sum to the final residual and the attributions to the logit."""


import pytest
import torch
from torch.testing import assert_close

from tests.conftest import random_model, unchanged
from minitx import dla


@pytest.fixture(params=["tied", "untied"])
def model(request):
    return random_model(tie_word_embeddings=request.param == "tied")


def final_resid(model, tokens, pos):
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{model.cfg.n_layer - 1}.hook_resid_post")
    return cache["resid_post", model.cfg.n_layer - 1][torch.arange(len(tokens)), pos]


@pytest.mark.parametrize("pos", [-1, 2, "per-prompt"])
def test_components_sum_to_final_resid(model, pos):
    tokens = torch.randint(0, 256, (3, 8))
    pos = torch.tensor([7, 3, 0]) if pos == "per-prompt" else pos
    with unchanged(model):
        d = dla.decompose_resid(model, tokens, pos=pos)
        summed = dla.decompose_resid(model, tokens, pos=pos, bias="summed")
    expected = final_resid(model, tokens, pos)
    L, H = model.cfg.n_layer, model.cfg.n_head
    assert d.scores.shape == (2 + L * (H + 2), 3, model.cfg.d_model)
    assert d.labels[:4] == ["embed", "pos_embed", "0.0", "0.1"] and d.labels[-2:] == [f"{L - 1}.b_O", f"{L - 1}.mlp"]
    for comps in (d.scores, summed.scores):
        error = (comps.sum(0) - expected).norm(dim=-1) / expected.norm(dim=-1)
        assert (error < 1e-5).all(), error
    assert summed.labels[-1] == "b_O" and len(summed.labels) == len(d.labels) - L + 1
    assert_close(d.resid, expected)


def test_heads_match_per_head_results(model):
    tokens = torch.randint(0, 256, (2, 6))
    d = dla.decompose_resid(model, tokens, pos=4)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_result"))
    assert_close(d.scores[d.labels.index("1.2")], cache["result", 1][:, 4, 2])
    assert_close(d.scores[d.labels.index("embed")], model.W_E[tokens[:, 4]])


@pytest.mark.parametrize("bias", ["per_layer", "summed"])
def test_dla_sums_to_logit_and_logit_difference(model, bias):
    tokens = torch.randint(0, 256, (3, 8))
    pos = torch.tensor([7, 5, 2])
    answer, wrong = torch.tensor([1, 50, 200]), 9
    with unchanged(model):
        single = dla.direct_logit_attribution(model, tokens, answer, pos=pos, bias=bias)
        diff = dla.direct_logit_attribution(model, tokens, answer, wrong=wrong, pos=pos, bias=bias)
    logits = model(tokens)[torch.arange(3), pos]  # [batch, d_vocab], a forward without any cache
    assert_close(single.target, logits[torch.arange(3), answer], atol=1e-5, rtol=1e-5)
    assert_close(single.total, single.target, atol=1e-4, rtol=0)
    assert_close(diff.target, logits[torch.arange(3), answer] - logits[:, wrong], atol=1e-5, rtol=1e-5)
    assert_close(diff.total, diff.target, atol=1e-4, rtol=0)
    assert diff.per_prompt.shape == (len(diff.labels), 3)
    L, H = model.cfg.n_layer, model.cfg.n_head
    assert diff.heads.shape == (L, H, 3)
    assert_close(diff.heads[1, 3], diff.per_prompt[diff.labels.index("1.3")])
    # The bias term is what the logits hold once the stream's own share is gone: with ln_final's scale
    # replaced by a huge one, the normalised stream is ~0 and only beta_f W_U is left.
    huge = [("ln_final.hook_scale", lambda scale, hook: torch.full_like(scale, 1e30))]
    only_bias = model.run_with_hooks(tokens, fwd_hooks=huge)[torch.arange(3), pos]
    assert_close(diff.bias_term, only_bias[torch.arange(3), answer] - only_bias[:, wrong], atol=1e-5, rtol=1e-5)


def test_errors(model):
    tokens = torch.randint(0, 256, (2, 5))
    with pytest.raises(ValueError, match="position 5 is out of range for prompts of 5 tokens; allowed: -5..4"):
        dla.decompose_resid(model, tokens, pos=5)
    with pytest.raises(ValueError, match=r"shape \[batch\]=\[2\]"):
        dla.decompose_resid(model, tokens, pos=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dla.direct_logit_attribution(model, tokens, answer=257)
    with pytest.raises(ValueError, match="bias="):
        dla.decompose_resid(model, tokens, bias="none")
