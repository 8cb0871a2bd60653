"""Weight processing (docs/methods.md §11), in float64: each transform's invariant to 1e-10, new models that
say what was applied, the original untouched, and the processed model's log-probs equal to transformers'
on the raw checkpoint."""

import json

import pytest
import torch
from torch.testing import assert_close

import minitx
from minitx import circuits, processing
from tests.conftest import random_model

EXACT = dict(atol=1e-10, rtol=1e-10)


@pytest.fixture(scope="module", params=["tied", "untied"])
def model(request):
    return random_model(n_layer=2, n_head=4, n_embd=32, vocab_size=60, n_positions=20,
                        tie_word_embeddings=request.param == "tied").double()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 60, (3, 14), generator=torch.Generator().manual_seed(0))


def run(model, tokens):
    return model.run_with_cache(tokens, names_filter=lambda name: True)


@pytest.mark.parametrize("name", processing.TRANSFORMS)
def test_each_transform_returns_a_new_model_that_says_so(model, tokens, name):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = getattr(processing, name)(model)
    assert new is not model and new.cfg.processing == (name,) and model.cfg.processing == ()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert new.W_E.dtype == torch.float64
    with pytest.raises(ValueError, match="already applied"):
        getattr(processing, name)(new)


def test_fold_ln(model, tokens):
    new = processing.fold_ln(model)
    logits, cache = run(model, tokens)
    new_logits, new_cache = run(new, tokens)
    assert_close(new_logits, logits, **EXACT)
    for layer in range(model.cfg.n_layer):
        for point in ("q", "k", "v", "pattern", "attn_out", "pre", "resid_post"):
            assert_close(new_cache[point, layer], cache[point, layer], **EXACT)
        for ln in (new.blocks[layer].ln1, new.blocks[layer].ln2):
            assert torch.equal(ln.w, torch.ones_like(ln.w)) and torch.equal(ln.b, torch.zeros_like(ln.b))
    for reader in (new.W_Q, new.W_K, new.W_V, new.W_in):  # centred over d_model: they read a mean-zero vector
        assert_close(reader.mean(-2), torch.zeros_like(reader.mean(-2)), atol=1e-12, rtol=0)
    assert torch.equal(new.ln_final.w, torch.ones_like(new.ln_final.w))
    assert_close(new.ln_final.b, model.ln_final.b / model.ln_final.w, **EXACT)  # no b_U in GPT-2
    assert not new.cfg.tie_word_embeddings
    assert_close(new.W_E, model.W_E, **EXACT)  # untying left the embedding alone


@pytest.mark.parametrize("first", [(), ("fold_ln",)])
def test_center_writing_weights(model, tokens, first):
    source = processing.process(model, first) if first else model
    new = processing.center_writing_weights(source)
    logits, cache = run(model, tokens)
    new_logits, new_cache = run(new, tokens)
    assert_close(new_logits, logits, **EXACT)
    for layer in range(model.cfg.n_layer):
        assert_close(new_cache["pattern", layer], cache["pattern", layer], **EXACT)
        for point in ("resid_pre", "resid_mid", "resid_post"):  # mean-zero writes, so a mean-zero stream
            mean = new_cache[point, layer].mean(-1)
            assert_close(mean, torch.zeros_like(mean), atol=1e-12, rtol=0)
    for weight in (new.W_E, new.W_pos, new.W_O, new.b_O, new.W_out, new.b_out):
        assert_close(weight.mean(-1), torch.zeros_like(weight.mean(-1)), atol=1e-12, rtol=0)


def test_center_unembed(model, tokens):
    new = processing.center_unembed(model)
    logits, new_logits = model(tokens), new(tokens)
    assert_close(new.W_U.mean(-1), torch.zeros(model.cfg.d_model, dtype=torch.float64), atol=1e-12, rtol=0)
    shift = new_logits - logits  # one constant per position
    assert_close(shift, shift[..., :1].expand_as(shift), **EXACT)
    assert_close(new_logits.log_softmax(-1), logits.log_softmax(-1), **EXACT)
    assert torch.equal(new_logits.argmax(-1), logits.argmax(-1))


def test_fold_value_biases(model, tokens):
    new = processing.fold_value_biases(model)
    logits, cache = run(model, tokens)
    new_logits, new_cache = run(new, tokens)
    assert torch.equal(new.b_V, torch.zeros_like(new.b_V))
    assert_close(new_logits, logits, **EXACT)
    for layer in range(model.cfg.n_layer):
        assert_close(new_cache["attn_out", layer], cache["attn_out", layer], **EXACT)
        assert_close(new_cache["pattern", layer], cache["pattern", layer], **EXACT)


@pytest.mark.parametrize("order", [processing.TRANSFORMS, processing.TRANSFORMS[::-1]])
def test_all_four_compose_in_any_order(model, tokens, order):
    new = processing.process(model, order)
    assert new.cfg.processing == tuple(order)
    assert_close(new(tokens).log_softmax(-1), model(tokens).log_softmax(-1), **EXACT)
    with pytest.raises(ValueError, match="transforms must be"):
        processing.process(model, ["fold_ln", "fold_layernorm"])


def test_processed_log_probs_equal_transformers_on_the_raw_checkpoint(tmp_path, tokens):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=20, vocab_size=60,
                                     attn_implementation="eager", bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval().double()
    with torch.no_grad():  # random biases and layer-norm gains, so every fold matters
        for param in hf.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.3)
    hf.save_pretrained(tmp_path / "raw")
    raw = minitx.load(str(tmp_path / "raw"), dtype=torch.float64)
    processed = processing.process(raw)
    with torch.no_grad():
        expected = hf(tokens).logits.log_softmax(-1)
    assert_close(processed(tokens).log_softmax(-1), expected, **EXACT)
    assert_close(raw(tokens), hf(tokens).logits, **EXACT)  # the original still gives transformers' logits
    # Saved, the processed model says what it is, and both minitx and transformers read it back.
    processed.save_pretrained(tmp_path / "processed")
    saved = json.loads((tmp_path / "processed" / "config.json").read_text())
    assert saved["processing"] == list(processing.TRANSFORMS) and saved["tie_word_embeddings"] is False
    again = minitx.load(str(tmp_path / "processed"), dtype=torch.float64)
    assert again.cfg.processing == processing.TRANSFORMS
    assert_close(again(tokens), processed(tokens), **EXACT)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "processed").double().eval()
    with torch.no_grad():
        assert_close(theirs(tokens).logits.log_softmax(-1), expected, **EXACT)


def test_processed_convention_of_the_circuits(model):
    processed = processing.process(model)
    for layer in range(model.cfg.n_layer):
        ours = circuits.full_OV_circuit(model, layer, 1, embedding="processed").AB
        expected = processed.W_E @ processed.W_V[layer, 1] @ processed.W_O[layer, 1] @ processed.W_U
        assert_close(ours, expected, **EXACT)
        same = circuits.full_OV_circuit(processed, layer, 1, embedding="processed").AB  # already processed: as is
        assert_close(same, expected, **EXACT)
    scores = circuits.copying_scores(model, embedding="processed")
    assert scores.processing == processing.TRANSFORMS and scores.embedding == "processed"


@pytest.mark.parametrize("steps", [("fold_ln",), ("fold_ln", "center_writing_weights"), processing.TRANSFORMS])
def test_verify_rows_name_and_check_each_invariant(model, tokens, steps):
    from minitx.verify import processing_rows
    rows = processing_rows(processing.process(model, steps), model, tokens, tolerance=1e-10)
    assert all(row.ok for row in rows), [(row.point, row.max_abs_diff) for row in rows if not row.ok]
    points = [row.point for row in rows]
    assert points[0] == "log-probs (every transform)"
    assert ("center_unembed" in points[1]) == ("center_unembed" in steps)
    assert any("mean over d_model is 0" in p for p in points) == ("center_writing_weights" in steps)
    with pytest.raises(ValueError, match="must be processed"):
        processing_rows(model, model, tokens)


def test_verify_a_saved_processed_checkpoint_against_its_source(tmp_path, capsys):
    from minitx import cli
    source = minitx.load("weights/induction-2l")
    processing.process(source).save_pretrained(tmp_path / "processed")
    assert cli.main(["verify", str(tmp_path / "processed"), "--source", "weights/induction-2l"]) == 0
    out = capsys.readouterr().out
    assert "log-probs (every transform)" in out and "checks within tolerance" in out
