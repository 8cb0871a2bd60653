"""minitx.metrics.next_token_loss: known answers and its agreement with log_prob read position by position."""

import math

import pytest
import torch
from torch.testing import assert_close

from minitx import metrics
from tests.conftest import random_model


def test_uniform_logits_cost_log_vocabulary_and_a_sure_model_costs_nothing():
    tokens = torch.randint(0, 10, (2, 5))
    assert_close(metrics.next_token_loss(torch.zeros(2, 5, 10), tokens), torch.tensor(math.log(10)))
    sure = torch.full((2, 5, 10), -1e4)
    sure[:, :-1].scatter_(-1, tokens[:, 1:, None], 1e4)  # every next token predicted with certainty
    assert float(metrics.next_token_loss(sure, tokens)) == 0.0
    assert metrics.next_token_loss(sure, tokens, per_token=True).shape == (2, 4)


def test_equals_minus_log_prob_of_each_next_token():
    model = random_model()
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 7))
    logits = model(tokens)
    per_token = metrics.next_token_loss(logits, tokens, per_token=True)
    for i in range(6):
        assert_close(per_token[:, i], -metrics.log_prob(logits, tokens[:, i + 1], pos=i))
    assert_close(metrics.next_token_loss(logits, tokens), per_token.mean())


def test_refuses_tokens_that_do_not_match_the_logits():
    with pytest.raises(ValueError, match=r"tokens \(2, 4\) must be the \[batch, pos\] the logits"):
        metrics.next_token_loss(torch.zeros(2, 5, 10), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 positions"):
        metrics.next_token_loss(torch.zeros(1, 1, 10), torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        metrics.next_token_loss(torch.zeros(1, 3, 10), torch.tensor([[1, 2, 10]]))
