"""Bootstrap intervals over prompts (minitx.stats): coverage on synthetic data with a known mean, seeded
reproducibility, the ratio of means, intervals of patching results, and the verdict rule."""

import math

import pytest
import torch

from minitx import metrics as M
from minitx import patching as P
from minitx import path_patching as PP
from minitx import stats as S
from tests.conftest import random_model

REPETITIONS = 200


def _binomial_band(p: float = 0.95, n: int = REPETITIONS, sds: float = 3.0) -> tuple[float, float]:
    """Counts of covered repetitions within sds binomial standard deviations of n * p."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - sds * sd, n * p + sds * sd


def test_coverage_of_the_mean_on_synthetic_data():
    g = torch.Generator().manual_seed(1)
    low, high = _binomial_band()
    for draw, true_mean in ((lambda: 3 + torch.randn(40, generator=g), 3.0),
                            (lambda: torch.empty(100).exponential_(1.0, generator=g), 1.0)):
        covered = 0
        for rep in range(REPETITIONS):
            iv = S.bootstrap(draw(), resamples=1000, seed=rep)
            covered += float(iv.low) <= true_mean <= float(iv.high)
        assert low <= covered <= high, (covered, low, high)  # measured: 189 and 186 of 200


def test_coverage_of_a_normalised_score():
    g = torch.Generator().manual_seed(2)
    low, high = _binomial_band()
    covered = 0
    for rep in range(REPETITIONS):
        clean = 2 + torch.randn(50, generator=g)
        corrupted = -1 + 0.5 * torch.randn(50, generator=g)
        patched = corrupted + 0.4 * (clean - corrupted) + 0.3 * torch.randn(50, generator=g)  # true score 0.4
        iv = S.normalized_interval(patched, clean, corrupted, resamples=1000, seed=rep)
        covered += float(iv.low) <= 0.4 <= float(iv.high)
    assert low <= covered <= high, covered


def test_seeded_reproducible_and_shaped():
    x = torch.randn(3, 4, 30, generator=torch.Generator().manual_seed(0))
    a, b, c = S.bootstrap(x, seed=5), S.bootstrap(x, seed=5), S.bootstrap(x, seed=6)
    assert torch.equal(a.low, b.low) and torch.equal(a.high, b.high)
    assert not torch.equal(a.low, c.low)
    assert a.estimate.shape == a.low.shape == (3, 4) and a.n == 30 and a.resamples == 2000
    torch.testing.assert_close(a.estimate, x.mean(-1))
    assert bool((a.low <= a.estimate).all() and (a.estimate <= a.high).all())
    one = a[1, 2]  # one entry's interval is the same as bootstrapping that entry alone with the same seed
    alone = S.bootstrap(x[1, 2], seed=5)
    torch.testing.assert_close((one.low, one.high), (alone.low, alone.high))
    assert str(alone).count("[") == 1


def test_resample_weights_and_percentile():
    w = S.resample_weights(7, 500, seed=0)
    assert w.shape == (500, 7)
    torch.testing.assert_close(w.sum(1), torch.ones(500, dtype=torch.float64))
    assert bool(((w * 7) == (w * 7).round()).all())  # counts / n
    x = torch.arange(11.0)
    assert float(S.percentile(x, 0.5)) == 5.0 and float(S.percentile(x, 0.25)) == 2.5
    assert float(S.percentile(x, 0.0)) == 0.0 and float(S.percentile(x, 1.0)) == 10.0


def test_constant_values_give_a_point_interval():
    iv = S.bootstrap(torch.full((20,), 0.7))
    assert float(iv.low) == pytest.approx(0.7) and float(iv.high) == pytest.approx(0.7)


@pytest.mark.parametrize("low, high, threshold, above, expected", [
    (0.35, 0.50, 0.3, True, "established"),
    (0.25, 0.50, 0.3, True, "not established"),   # straddles: the mean may be above, the verdict is not
    (0.30, 0.50, 0.3, True, "not established"),   # touching is not clearing
    (0.10, 0.20, 0.3, True, "not established"),
    (-0.4, -0.1, 0.0, False, "established"),
    (-0.4, 0.1, 0.0, False, "not established"),
    (float("nan"), 0.5, 0.0, True, "not established"),
])
def test_verdict_needs_the_interval(low, high, threshold, above, expected):
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    iv = S.Interval(t((low + high) / 2), t(low), t(high), n=50)
    assert S.verdict(iv, threshold, above) == expected


def test_too_few_prompts_decide_no_verdict():
    """Below MIN_PROMPTS prompts an interval wholly above the threshold still decides nothing; at MIN_PROMPTS it does."""
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    clear = lambda n: S.Interval(t(0.6), t(0.5), t(0.7), n=n)
    assert S.MIN_PROMPTS == 8
    assert S.verdict(clear(3), 0.3) == "too few prompts (n = 3; at least 8 needed to decide)"
    assert S.verdict(clear(7), 0.3, above=False) == S.too_few(7) != S.NOT_ESTABLISHED
    assert S.verdict(clear(8), 0.3) == S.ESTABLISHED and S.too_few(8) is None
    assert S.verdict(S.bootstrap(torch.tensor([0.5, 0.6, 0.7])), 0.3).startswith("too few prompts (n = 3;")


def test_too_few_prompts_cover_too_little():
    """Why MIN_PROMPTS: a nominal 95% interval over 3 normal prompts covers the mean far less often than 95%."""
    g = torch.Generator().manual_seed(7)
    low, _ = _binomial_band()
    covered = sum(float((iv := S.bootstrap(torch.randn(3, generator=g), resamples=1000, seed=rep)).low) <= 0.0
                  <= float(iv.high) for rep in range(REPETITIONS))
    assert covered < low, (covered, low)  # measured 146 of 200 (0.72 over 2000 repetitions)


def test_complement_and_map():
    iv = S.Interval(torch.tensor(0.3), torch.tensor(0.2), torch.tensor(0.5), n=10)
    removed = iv.complement()
    assert (float(removed.low), float(removed.estimate), float(removed.high)) == pytest.approx((0.5, 0.7, 0.8))
    assert float(iv.map(lambda x: 100 * x).high) == pytest.approx(50)


def test_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        S.bootstrap(torch.ones(5), level=95)
    with pytest.raises(ValueError, match="resamples"):
        S.bootstrap(torch.ones(5), resamples=0)
    with pytest.raises(ValueError, match="prompts"):
        S.normalized_interval(torch.ones(2, 5), torch.ones(4), torch.zeros(5))
    with pytest.raises(ValueError, match="per-prompt"):
        S.bootstrap(torch.tensor(1.0))


def test_intervals_of_patching_and_path_patching_results():
    model = random_model(3, vocab_size=50)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(50, (12, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(50, (12,), generator=g)
    metric = M.logit_diff_metric(clean[:, -1] % 50, (clean[:, -1] + 1) % 50)
    c, x = S.baselines(model, clean, corrupted, metric)
    result = P.activation_patching(model, clean, corrupted, metric, "z", "all", direction="noising")
    iv = S.result_interval(result, c, x)
    torch.testing.assert_close(iv.estimate, result.scores.float(), atol=1e-5, rtol=1e-5)
    assert iv.low.shape == result.scores.shape and bool((iv.low <= iv.high).all())
    fixed = S.result_interval(result)  # its own per-prompt baselines (or their means): the same estimate
    torch.testing.assert_close(fixed.estimate, result.scores.float(), atol=1e-5, rtol=1e-5)
    path = PP.path_patch_senders(model, clean, corrupted, "logits", metric)
    torch.testing.assert_close(S.result_interval(path, c, x).estimate, path.scores.float(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not the same prompts"):
        S.result_interval(result, c + 1, x)
