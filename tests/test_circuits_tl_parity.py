"""Weight circuits and weight processing against TransformerLens 4.x on the same weights (docs/methods.md
§10.5 item 5, §11): QK and OV, all_composition_scores in the three modes, and the processed weights of
`enable_compatibility_mode()` (fold_ln, center_writing_weights, center_unembed, fold_value_biases).

TransformerLens is an optional peer: these tests skip unless it imports (the README's benchmark section
says how to install it; `.venv-peers/bin/python -m pytest tests/test_circuits_tl_parity.py`).
"""


import pytest
import torch
from torch.testing import assert_close

from minitx import circuits, processing
from tests.conftest import random_model
from tests.peers import tl_bridge

pytest.importorskip("transformer_lens.model_bridge")
pytestmark = pytest.mark.peers  # .ci/run runs these in .venv-peers
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ours = random_model(vocab_size=50257, n_layer=3, n_head=4, n_embd=64, n_positions=64)
    raw = tl_bridge(ours, tmp_path_factory.mktemp("raw"))
    processed = tl_bridge(ours, tmp_path_factory.mktemp("processed"))
    processed.enable_compatibility_mode(disable_warnings=True)
    return ours, raw, processed


def test_QK_and_OV_equal_transformer_lens(models):
    ours, theirs, _ = models
    with torch.no_grad():
        assert_close(circuits.QK(ours).AB, theirs.QK.AB, **TOL)
        assert_close(circuits.OV(ours).AB, theirs.OV.AB, **TOL)
        assert_close(circuits.QK(ours).norm(), theirs.QK.norm(), **TOL)
        assert_close(circuits.OV(ours).S, theirs.OV.S, **TOL)


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
def test_composition_scores_equal_all_composition_scores(models, mode):
    ours, raw, processed = models
    with torch.no_grad():
        assert_close(circuits.all_composition_scores(ours, mode).scores, raw.all_composition_scores(mode).scores, **TOL)
        assert_close(circuits.all_composition_scores(processing.process(ours), mode).scores,
                     processed.all_composition_scores(mode).scores, **TOL)


def test_processed_weights_equal_transformer_lens(models):
    ours, _, theirs = models
    mine = processing.process(ours)
    with torch.no_grad():
        for name in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "b_in", "W_out",
                     "b_out"):
            assert_close(getattr(mine, name), getattr(theirs, name), **TOL, msg=name)
        # TransformerLens moves ln_final's bias into b_U and can then centre W_U over d_model; GPT-2 has no b_U,
        # so minitx keeps the bias in ln_final (docs/methods.md §11). The same logits either way:
        assert_close(mine.W_U - mine.W_U.mean(0), theirs.W_U, **TOL)
        assert_close(mine.ln_final.b @ mine.W_U, theirs.b_U, **TOL)
        tokens = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
        assert_close(mine(tokens), theirs(tokens), atol=1e-4, rtol=1e-4)
