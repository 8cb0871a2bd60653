"""Known answers on the hand-built induction model of docs/methods.md §9.2 (tests/handbuilt.py).

Every expected number is derived from the construction, not measured from minitx:
  * clean: L1.0 copies the true next token with weight 1, so its logit is s = 10 and every other is 0;
  * corrupted ([BOS] + A' + A): no key's previous token matches a query's token, attention is
    uniform, and the true next token A_(i+1) is under no key up to the query: logit 0;
  * noising L0.0 (clean run, L0's output from the corrupted run): the keys' previous tokens are A',
    attention of query q = n+1+i is uniform over its q+1 keys, one of which (position i+2) holds the
    true next token: logit s / (n+2+i).
Layer norms are the identity to < 1e-6 relative and MLPs add 0 (see tests/handbuilt.py).
"""

import math

import pytest
import torch
from torch.testing import assert_close

from tests import handbuilt as hb
from minitx import dla, heads, lens
from minitx.attribution import atp_star_qk_fix, attribution_patching
from minitx.patching import activation_patching
from minitx.path_patching import path_patch

L0, L1 = (0, 0), (1, 0)
# Noising L0.0: the mean over i = 0..n-2 of 1 / (n+2+i), as a fraction of the clean logit s.
NOISED_L0 = sum(1 / (hb.N + 2 + i) for i in range(hb.N - 1)) / (hb.N - 1)


@pytest.fixture(scope="module")
def setup():
    model = hb.model()
    clean, corrupted = hb.prompts()
    return model, clean, corrupted, hb.correct_logit(clean), hb.correct_log_prob(clean)


def test_clean_and_corrupted_logits(setup):
    model, clean, corrupted, logit, _ = setup
    assert_close(logit(model(clean)), torch.full((len(clean),), hb.S), atol=1e-4, rtol=0)
    assert_close(logit(model(corrupted)), torch.zeros(len(clean)), atol=1e-4, rtol=0)


def test_head_scores_on_exact_index_sets(setup):
    model, clean, _, _, _ = setup
    assert float(heads.previous_token_scores(model, clean)[L0]) > 0.9999
    assert float(heads.induction_scores(model, n=hb.N, batch=8)[L1]) > 0.999
    # TransformerLens's "mul" with BOS kept: the rows of BOS (previous-token) or of the first copy
    # (induction) put their mass outside the detection pattern: (T-1)/T and n/(2n+1).
    assert_close(float(heads.detect_head(model, clean, "previous_token_head")[L0]), (hb.T - 1) / hb.T, atol=1e-5, rtol=0)
    assert_close(float(heads.detect_head(model, clean, "induction_head")[L1]), hb.N / (2 * hb.N + 1), atol=1e-5, rtol=0)


def test_activation_patching_scores(setup):
    model, clean, corrupted, logit, log_prob = setup
    denoise = activation_patching(model, clean, corrupted, logit, "z", by="all").scores[:, 0]
    noise = activation_patching(model, clean, corrupted, logit, "z", by="all", direction="noising").scores[:, 0]
    assert_close(denoise, torch.tensor([0.0, 1.0]), atol=1e-5, rtol=0)
    assert_close(noise, torch.tensor([NOISED_L0, 0.0]), atol=1e-5, rtol=0)
    # With log-probabilities, restoring L0 alone is worse than leaving it corrupted: the restored keys
    # point at positions that hold corrupted tokens (K and V form an AND gate).
    assert float(activation_patching(model, clean, corrupted, log_prob, "z", by="all").scores[L0]) < -1.0


@pytest.mark.parametrize("receiver, expected", [(("k", 1, 0), NOISED_L0), (("q", 1, 0), 1.0), (("v", 1, 0), 1.0),
                                                 ("logits", 1.0)])
def test_path_patching_from_the_previous_token_head(setup, receiver, expected):
    """L0.0's output matters only through L1.0's keys; through the keys it is all of noising L0.0."""
    model, clean, corrupted, logit, _ = setup
    assert_close(float(path_patch(model, clean, corrupted, L0, receiver, logit).scores), expected, atol=1e-6, rtol=0)


def test_atp_misses_the_saturated_key_path_and_the_qk_fix_recovers_it(setup):
    """Noising form (gradient on the clean run): swap the arguments of the denoising functions."""
    model, clean, corrupted, logit, log_prob = setup
    true_effect = hb.S * (NOISED_L0 - 1)  # -9.458
    plain = attribution_patching(model, corrupted, clean, logit).scores["z"]
    fixed = atp_star_qk_fix(model, corrupted, clean, logit).scores["z"]
    assert abs(float(plain[L0])) < 1e-4  # saturated softmax: zero gradient, a false negative
    assert_close(float(fixed[L0]), true_effect, atol=1e-3, rtol=0)
    assert_close(float(fixed[L1]), -hb.S, atol=1e-3, rtol=0)  # a last-layer head output: AtP is exact
    # The output softmax saturates as well, so with log-probabilities the fix still sees almost nothing.
    true_log_prob = float(activation_patching(model, clean, corrupted, log_prob, "z", by="all",
                                              direction="noising").raw[L0]) - float(log_prob(model(clean)).mean())
    assert true_log_prob < -1.0 and abs(float(atp_star_qk_fix(model, corrupted, clean, log_prob).scores["z"][L0])) < 0.05


def test_direct_logit_attribution_splits_the_logit(setup):
    model, clean, _, _, _ = setup
    q = int(hb.PREDICTED[0])
    result = dla.direct_logit_attribution(model, clean, clean[:, q + 1], pos=q)
    parts = dict(zip(result.labels, result.per_prompt))
    for label in ("embed", "pos_embed", "0.0"):
        assert_close(parts[label], torch.zeros(len(clean)), atol=1e-4, rtol=0)
    assert_close(parts["1.0"], torch.full((len(clean),), hb.S), atol=1e-4, rtol=0)
    assert_close(result.total, model(clean)[torch.arange(len(clean)), q, clean[:, q + 1]], atol=1e-4, rtol=0)


def test_logit_lens_after_layer_0_is_uniform(setup):
    model, clean, _, _, _ = setup
    result = lens.logit_lens(model, clean, positions=hb.PREDICTED.tolist())
    after_layer_0 = result.logits[result.labels.index("1_pre")]
    assert float((after_layer_0.max(-1).values - after_layer_0.min(-1).values).max()) < 1e-6
    # KL(final || uniform) = log V - H(final), final = softmax of s on the answer and 0 elsewhere.
    p = math.exp(hb.S) / (math.exp(hb.S) + hb.VOCAB - 1)
    entropy = -p * math.log(p) - (1 - p) * math.log((1 - p) / (hb.VOCAB - 1))
    kl = result.kl_to_final[result.labels.index("1_pre")]
    assert_close(kl, torch.full_like(kl, math.log(hb.VOCAB) - entropy), atol=1e-4, rtol=0)
    assert abs(math.log(hb.VOCAB) - entropy - 2.8252) < 1e-4  # docs/methods.md §9.2's figure
