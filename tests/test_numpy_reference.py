"""Parity with an independent NumPy forward that reads the checkpoint file itself."""

import numpy as np
import torch
from safetensors.numpy import load_file

import minitx
from tests.conftest import random_model
from tests.reference_numpy import gpt2_logits


def test_minitx_matches_the_numpy_reference(tmp_path):
    random_model(11, n_layer=3, n_head=3, n_embd=48, vocab_size=211).save_pretrained(tmp_path)
    state = {k: v.astype(np.float64) for k, v in load_file(tmp_path / "model.safetensors").items()}
    tokens = [5, 17, 200, 3, 3, 99, 150, 0]
    expected = gpt2_logits(tokens, state, n_layer=3, n_head=3)
    logits = minitx.load(str(tmp_path))(torch.tensor([tokens]))[0].double().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
