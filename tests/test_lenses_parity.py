"""Tuned and Jacobian lenses against their reference implementations, on the same weights (docs/methods.md §13.3
item 4). Optional peers, skipped cleanly when absent; run with the peers' environment:
    .venv-peers/bin/python -m pytest tests/test_lenses_parity.py
tuned-lens 0.2.0 runs on a transformers GPT-2 holding minitx's weights; TransformerLens 4.3's `JacobianLens.fit`
runs on its bridge booted from the checkpoint minitx saved (with GPT-2's tokenizer files beside it).
"""

import json
import logging
import warnings

import pytest
import torch
from torch.testing import assert_close

import minitx
from minitx import lens
from minitx.jacobian_lens import JacobianLens, fit_jacobian_lens
from minitx.tuned_lens import TunedLens
from tests.conftest import random_model
from tests.peers import tl_bridge
from tests.test_lens import hf_twin

pytestmark = pytest.mark.peers  # .ci/run runs these with .venv-peers

PROMPTS = ["When Mary and John went to the store, John gave a drink to Mary.",
           "The cat sat on the mat and the dog sat on the rug, because it was warm.",
           "After the meeting, the students walked home slowly through the park."]


@pytest.fixture
def twin(monkeypatch):
    surgery = pytest.importorskip("tuned_lens.model_surgery")
    # tuned-lens 0.2.0 predates TransformerLens 4, where reading tl.HookedTransformer raises ImportError; with
    # both installed it would fail on every transformers model. Telling it TL is absent keeps its HF path.
    monkeypatch.setattr(surgery, "_transformer_lens_available", False)
    return hf_twin(seed=3)


def random_tuned_lens(model, seed=0):
    ours = TunedLens(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return ours


def test_same_translators_give_the_same_logits_as_tuned_lens(twin):
    import tuned_lens
    hf, model = twin
    ours = random_tuned_lens(model)
    theirs = tuned_lens.TunedLens.from_model(hf)
    theirs.layer_translators.load_state_dict(ours.translators.state_dict())
    assert theirs.config.unembed_hash == lens.unembed_hash(model)  # the same fingerprint of the same W_U
    tokens = torch.randint(0, 257, (2, 11))
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states[:-1]  # tuned-lens's inputs
        result = lens.read_lens(ours, tokens)
        for layer, h in enumerate(hidden):
            assert_close(ours(h, layer), theirs(h, layer), atol=1e-5, rtol=1e-5)
            assert_close(result.logits[layer], theirs(h, layer), atol=1e-5, rtol=1e-5)


def test_a_lens_saved_by_either_library_loads_in_the_other(twin, tmp_path, caplog):
    import tuned_lens
    hf, model = twin
    ours = random_tuned_lens(model, seed=1)
    ours.save(tmp_path / "ours")
    with caplog.at_level(logging.WARNING):
        loaded = tuned_lens.TunedLens.from_model_and_pretrained(hf, str(tmp_path / "ours"))
    assert "does not match" not in caplog.text  # tuned-lens recognises minitx's hash as this model's
    for name, tensor in ours.translators.state_dict().items():
        assert torch.equal(loaded.layer_translators.state_dict()[name], tensor)

    theirs = tuned_lens.TunedLens.from_model(hf)
    with torch.no_grad():
        for p in theirs.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.05)
    theirs.save(tmp_path / "theirs")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same model: no hash warning
        back = TunedLens.load(model, tmp_path / "theirs")
    for name, tensor in theirs.layer_translators.state_dict().items():
        assert torch.equal(back.translators.state_dict()[name], tensor)

    # Published GPT-2 lenses spell the key "unemebd_hash"; tuned-lens ignores it, minitx reads it.
    config = json.loads((tmp_path / "theirs" / "config.json").read_text())
    config["unemebd_hash"] = config.pop("unembed_hash")
    (tmp_path / "theirs" / "config.json").write_text(json.dumps(config))
    tuned_lens.TunedLens.from_model_and_pretrained(hf, str(tmp_path / "theirs"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TunedLens.load(model, tmp_path / "theirs")


@pytest.fixture(scope="module")
def bridge_pair(tmp_path_factory):
    pytest.importorskip("transformer_lens.tools.analysis.jacobian_lens")
    ours = random_model(vocab_size=50257, n_layer=3, n_head=4, n_embd=32, n_positions=64)
    return ours, tl_bridge(ours, tmp_path_factory.mktemp("checkpoint"))


def test_jacobian_lens_equals_transformer_lens_fit(bridge_pair, tmp_path):
    from transformer_lens.tools.analysis.jacobian_lens import JacobianLens as TLJacobianLens
    ours, theirs = bridge_pair
    tok = minitx.Tokenizer.default()
    prompts = [tok.to_tokens(p, prepend_bos=True)[0] for p in PROMPTS]  # TL's to_tokens prepends BOS too
    assert torch.equal(theirs.to_tokens(PROMPTS[0])[0], prompts[0])
    expected = TLJacobianLens.fit(theirs, PROMPTS, corpus="test prompts", dim_batch=8, max_seq_len=64,
                                  skip_first_positions=4, show_progress=False)
    fitted = fit_jacobian_lens(ours, prompts, dim_batch=8, max_seq_len=64, skip_first_positions=4, progress=False)
    assert fitted.source_layers == expected.source_layers == [0, 1] and fitted.n_prompts == expected.n_prompts == 3
    for layer in fitted.source_layers:
        assert_close(fitted.jacobians[layer], expected.jacobians[layer], atol=1e-4, rtol=0)

    # Each loads the other's file (float16 storage: compare to the stored precision).
    fitted.save(tmp_path / "ours.pt")
    loaded = TLJacobianLens.load(str(tmp_path / "ours.pt"))
    loaded.validate_model(theirs)
    expected.save(str(tmp_path / "theirs.pt"))
    back = JacobianLens.load(ours, tmp_path / "theirs.pt")
    for layer in fitted.source_layers:
        assert_close(loaded.jacobians[layer], fitted.jacobians[layer], atol=1e-3, rtol=1e-3)
        assert_close(back.jacobians[layer], expected.jacobians[layer], atol=1e-3, rtol=1e-3)
    # Reading through the same J: TL's readout and minitx's lens give the same top tokens and logits.
    readout = loaded.readout(theirs, PROMPTS[1], top_k=5, return_full_logits=True)
    mine = lens.read_lens(JacobianLens.load(ours, tmp_path / "ours.pt"), prompts[1][None], top_k=5)
    for layer in fitted.source_layers:
        assert_close(mine.logits[layer, 0], readout.lens_logits[layer], atol=1e-4, rtol=1e-4)
