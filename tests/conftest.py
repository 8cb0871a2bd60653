"""Shared fixtures: small random GPT-2 models built offline, no downloads."""

import contextlib

import pytest
import torch

import minitx


def random_model(seed: int = 0, **overrides) -> minitx.Transformer:
    """A minitx GPT-2 with random weights, including non-trivial biases and layer-norm gains,
    so that identities are tested on weights where every term matters."""
    cfg = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=257)
    cfg.update(overrides)
    model = minitx.Transformer(minitx.Config(**cfg)).init_weights(seed, std=0.1)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval().requires_grad_(False)


@pytest.fixture
def tiny_model():
    return random_model()


@pytest.fixture(autouse=True)
def _deterministic():
    # One thread: tiny models spend longer fighting over threads than computing, and results are
    # then bitwise repeatable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def unchanged(model):
    """The call under test leaves every weight as it was and no hook behind."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    yield
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert not model.has_context_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
