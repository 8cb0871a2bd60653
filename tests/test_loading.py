"""Tests for minitx.loading: logit parity with transformers on every checkpoint layout, the errors
for bad checkpoints, configs and names, save_pretrained round trips, and the offline HF-cache lookup.

transformers is the test oracle only. Everything here is offline: an autouse fixture points the HF
cache at tmp_path and sets HF_HUB_OFFLINE=1, so a bug that reached for the network fails instead.
"""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

import minitx
from minitx import hub, loading
from minitx.loading import load, save_pretrained
from tests.conftest import random_model

TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def hf_model(seed=0, **overrides) -> GPT2LMHeadModel:
    """A random HF GPT-2; biases and layer-norm gains perturbed so every term of the forward matters."""
    cfg = dict(n_layer=2, n_head=4, n_embd=32, n_positions=32, vocab_size=101, bos_token_id=0, eos_token_id=0)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**cfg, attn_implementation="eager")).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.1)
    return model.requires_grad_(False)


def tokens_for(vocab, n_ctx, seed=1):
    return torch.randint(0, vocab, (2, min(n_ctx, 12)), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(hf, ours):
    tokens = tokens_for(hf.config.vocab_size, hf.config.n_positions)
    torch.testing.assert_close(ours(tokens), hf(tokens).logits, **TOL)


SHAPES = {
    "tiny": {},
    "three_heads": dict(n_layer=3, n_head=3, n_embd=36, n_inner=50, activation_function="gelu"),
    "scaled_upcast": dict(n_layer=3, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
    "untied": dict(tie_word_embeddings=False, activation_function="relu"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_transformers(tmp_path, shape):
    hf = hf_model(**SHAPES[shape])
    hf.save_pretrained(tmp_path / "m")
    ours = load(tmp_path / "m")
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in ours.parameters())
    assert_same_logits(hf, ours)


def test_gpt2_small_shape_float16(tmp_path):
    """The real GPT-2 small shape (12 x 12 x 768, 50257 tokens). Written straight as a float16 file,
    as the hub's are, and read by both transformers and minitx: HF's own random init is too slow here."""
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    with torch.device("meta"):
        names = GPT2LMHeadModel(config).state_dict()  # names and shapes only, no memory
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in names.items():
        if key != "lm_head.weight":  # tied, so HF leaves it out
            x = torch.randn(meta.shape, generator=generator)
            state[key] = (x * 0.02 if meta.dim() > 1 else x * 0.1 + key.endswith("ln_1.weight")).half()
    (tmp_path / "m").mkdir()
    save_file(state, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(tmp_path / "m")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "m", dtype=torch.float32, attn_implementation="eager")
    ours = load(str(tmp_path / "m"))
    assert ours.cfg.n_layer == 12 and ours.W_E.dtype == torch.float32
    tokens = torch.randint(0, 50257, (1, 10), generator=generator)
    torch.testing.assert_close(ours(tokens), hf.eval()(tokens).logits, **TOL)


def test_sharded_checkpoint(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "m").glob("model-*.safetensors"))) > 1
    assert_same_logits(hf, load(tmp_path / "m"))


def test_pytorch_model_bin_with_old_buffers(tmp_path):
    hf = hf_model()
    state = hf.state_dict()  # includes lm_head.weight, tied to wte: checked, then ignored
    n = hf.config.n_positions
    for layer in range(hf.config.n_layer):  # the causal-mask buffers old checkpoints carry
        state[f"transformer.h.{layer}.attn.bias"] = torch.ones(1, 1, n, n, dtype=torch.bool).tril()
        state[f"transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "m").mkdir()
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "m" / "config.json")
    assert_same_logits(hf, load(tmp_path / "m"))


CALLS = []


def _record(*args):  # what unpickling the object below would run; the test asserts it never does
    CALLS.append(args)
    return torch.zeros(1)


class Payload:
    def __reduce__(self):
        return (_record, ("code ran",))


def test_bin_with_pickled_object_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    torch.save({"transformer.wte.weight": Payload()}, tmp_path / "m" / "pytorch_model.bin")
    hf_model().config.to_json_file(tmp_path / "m" / "config.json")
    refused = r"refused: unpickling it would call \S*test_loading._record.*weights_only=True.*arbitrary code"
    with pytest.raises(ValueError, match=refused):
        load(tmp_path / "m")
    assert CALLS == []


def test_single_safetensors_file(tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    alone = tmp_path / "alone"
    alone.mkdir()
    os.replace(tmp_path / "hf" / "model.safetensors", alone / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match="config.json next to the file"):
        load(alone / "weights.safetensors")
    os.replace(tmp_path / "hf" / "config.json", alone / "config.json")  # a config beside it is used
    assert_same_logits(hf, load(str(alone / "weights.safetensors")))


def test_single_file_from_our_save_carries_its_config(tmp_path):
    model = random_model(n_head=2)
    save_pretrained(model, tmp_path / "m")
    os.replace(tmp_path / "m" / "model.safetensors", tmp_path / "only.safetensors")
    loaded = load(tmp_path / "only.safetensors")
    assert loaded.cfg == model.cfg
    tokens = tokens_for(257, 64)
    torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)


def test_float16_and_bfloat16_checkpoints_are_upcast(tmp_path):
    hf = hf_model()
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "m")
    hf.float()
    ours = load(tmp_path / "m")
    assert {p.dtype for p in ours.parameters()} == {torch.float32}
    assert_same_logits(hf, ours)
    assert {p.dtype for p in load(tmp_path / "m", dtype=torch.float16).parameters()} == {torch.float16}
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load(tmp_path / "m", dtype=torch.int64)


def write_checkpoint(directory, state, config):
    directory.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def hf_parts(**overrides):
    hf = hf_model(**overrides)
    return {k: v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}, hf.config.to_dict()


def test_missing_unexpected_and_wrong_shaped_tensors(tmp_path):
    state, config = hf_parts()
    for key in [k for k in state if k.startswith("transformer.h.1.")]:
        del state[key]  # all 12 tensors of layer 1
    state["transformer.h.0.attn.c_attn.weight"] = state["transformer.h.0.attn.c_attn.weight"].T
    state["transformer.h.0.ln_1.bias"] = state["transformer.h.0.ln_1.bias"].long()
    state["transformer.h.7.mlp.c_fc.weight"] = torch.zeros(2, 2)
    state["something.else"] = torch.zeros(1)
    with pytest.raises(ValueError) as info:
        load(write_checkpoint(tmp_path / "m", state, config))
    message = str(info.value)
    assert "12 missing: h.1.ln_1.weight" in message and "(7 more)" in message
    assert "2 unexpected" in message and "something.else" in message and "transformer.h.7.mlp.c_fc.weight" in message
    assert "transformer.h.0.attn.c_attn.weight [96, 32] float32, expected [32, 96]" in message
    assert "transformer.h.0.ln_1.bias [32] int64" in message
    assert "n_layer=2" in message and "model.safetensors" in message


def test_keys_without_prefix_and_duplicates(tmp_path):
    hf = hf_model()
    state, config = hf_parts()
    bare = {k.removeprefix("transformer."): v for k, v in state.items()}  # as the hub's gpt2 files are
    assert_same_logits(hf, load(write_checkpoint(tmp_path / "bare", bare, config)))
    both = {**bare, "transformer.wte.weight": bare["wte.weight"].clone()}
    with pytest.raises(ValueError, match=r"wte.weight \(given twice"):
        load(write_checkpoint(tmp_path / "both", both, config))


def test_lm_head_rules(tmp_path):
    state, config = hf_parts()
    state["lm_head.weight"] = torch.randn_like(state["transformer.wte.weight"])
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load(write_checkpoint(tmp_path / "tied", state, config))
    state, config = hf_parts(tie_word_embeddings=False)
    with pytest.raises(ValueError, match="1 missing: lm_head.weight"):
        load(write_checkpoint(tmp_path / "untied", state, config))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_file(tmp_path, damage):
    hf_model().save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not safetensors" * 9, "empty": b""}[damage])
    with pytest.raises(ValueError, match="not a readable safetensors file.*truncated or corrupt"):
        load(tmp_path / "m")


def test_garbage_bin_file(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"definitely not a checkpoint")
    hf_model().config.to_json_file(tmp_path / "m" / "config.json")
    with pytest.raises(ValueError, match=r"pytorch_model.bin: not a readable PyTorch checkpoint of plain tensors "
                                         r"\(Unsupported operand"):
        load(tmp_path / "m")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="pytorch_model.bin: not a readable PyTorch checkpoint"):
        load(tmp_path / "m")


@pytest.mark.parametrize("change, match", [
    (dict(n_embd=30, n_head=4), "not divisible by n_head"),
    (dict(n_layer=-1), "n_layer=-1 is not allowed"),
    (dict(vocab_size=0), "vocab_size=0 is not allowed"),
    (dict(activation_function="swooshy"), "'swooshy' is not supported"),
    (dict(model_type="llama"), "GPT-2 checkpoints only"),
])
def test_bad_config_values(tmp_path, change, match):
    hf_model().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=match) as info:
        load(tmp_path / "m")
    assert "config.json" in str(info.value)


def test_unreadable_config_and_missing_files(tmp_path):
    hf_model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: cannot read the model config"):
        load(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights; expected one of model.safetensors"):
        load(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"config.json: not a weights file; give a model directory"):
        load(tmp_path / "empty" / "config.json")


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_loads_in_transformers(tmp_path, tied):
    model = random_model(n_head=2, tie_word_embeddings=tied)
    save_pretrained(model, tmp_path / "m")
    hf, info = GPT2LMHeadModel.from_pretrained(tmp_path / "m", output_loading_info=True,
                                               attn_implementation="eager")
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    keys = load_file(tmp_path / "m" / "model.safetensors").keys()
    assert ("lm_head.weight" in keys) != tied and all(k.startswith("transformer.") or k == "lm_head.weight"
                                                      for k in keys)
    tokens = tokens_for(257, 64)
    torch.testing.assert_close(hf.eval()(tokens).logits, model(tokens), **TOL)
    torch.testing.assert_close(load(tmp_path / "m")(tokens), model(tokens), atol=0, rtol=0)
    assert minitx.save_pretrained is save_pretrained and minitx.load is load


def fake_cache(cache_root, folder, hf):
    """A checkpoint in huggingface_hub's cache layout: refs/main -> snapshot of links to blobs."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_root / folder
    hf.save_pretrained(repo / "tmp")
    (repo / "blobs").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        os.replace(repo / "tmp" / name, repo / "blobs" / f"blob-{name}")
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../blobs/blob-{name}", repo / "snapshots" / commit / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo


@pytest.mark.parametrize("folder, name", [("models--gpt2", "gpt2"),
                                          ("models--openai-community--gpt2", "gpt2"),
                                          ("models--gpt2", "openai-community/gpt2"),
                                          ("models--org--tiny.v1_x", "org/tiny.v1_x")])
def test_hf_cache_offline(tmp_path, folder, name):
    hf = hf_model()
    fake_cache(tmp_path / "hf_home" / "hub", folder, hf)
    assert_same_logits(hf, load(name))


def test_hf_cache_first_needs_no_network(tmp_path, monkeypatch):
    hf = hf_model()
    fake_cache(tmp_path / "elsewhere", "models--gpt2", hf)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # wins over HF_HOME
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was touched although the cache has the model")
    monkeypatch.setattr(hub, "_fetch_once", no_network)
    monkeypatch.setattr(hub.urllib.request, "urlopen", no_network)
    assert_same_logits(hf, load("gpt2"))


def test_incomplete_cache_snapshot_is_not_trusted(tmp_path):
    repo = fake_cache(tmp_path / "hf_home" / "hub", "models--gpt2", hf_model())
    next((repo / "snapshots").iterdir()).joinpath("model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="minitx download gpt2"):
        load("gpt2")


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_and_missing_names_the_command(monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(hub, "_fetch_once", lambda *a, **k: pytest.fail("network touched while offline"))
    with pytest.raises(FileNotFoundError, match=rf"{variable} is set.*`minitx download org/absent`"):
        load("org/absent")
    with pytest.raises(OSError, match=f"{variable} is set"):
        loading.download("org/absent")


def test_a_missing_path_in_an_existing_folder_is_reported_as_a_path(tmp_path, monkeypatch):
    (tmp_path / "weights" / "english-6l").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match=r"'\.\./x': no such local file or directory \(the folder \.\. exists\)"):
        load("../x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"did you mean weights/english-6l\? For the hub repo of that name"):
        load("weights/english-6")  # a valid hub id too, but the folder says it is a path
    with pytest.raises(FileNotFoundError, match=r"'/x-absent': no such local file or directory \(the folder / exists\)$"):
        load("/x-absent")  # not a hub id either, so no advice to download it


def test_a_name_close_to_a_shipped_model_is_caught_before_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of these names
    for name in ("english6l", "Induction-2l", "weights/english-6"):
        with pytest.raises(FileNotFoundError, match=r"is not a shipped model; did you mean '(english-6l|induction-2l)'"):
            load(name)


@pytest.mark.parametrize("name", ["a/b/c", "-x", ".x", "x-", "a..b", "a--b", "a b", "x" * 97, "",
                                  "org/", "/abs/missing/path", "x.git", "ünï"])
def test_bad_names_are_rejected(name):
    with pytest.raises(ValueError, match="neither an existing file or directory nor a valid hub repo id"):
        load(name)


def test_valid_repo_ids():
    for name in ["gpt2", "gpt2-xl", "distilgpt2", "openai-community/gpt2-medium", "a", "A_b.c-9/x_1", "x" * 96]:
        assert loading.is_valid_repo_id(name), name
    with pytest.raises(ValueError, match="revision"):
        load("gpt2", revision="../main")


@pytest.mark.parametrize("tied", [True, False])
def test_checkpoint_knows_every_parameter_from_the_config_alone(tied):
    """checkpoint.parameter_shapes(cfg) (no model built) lists exactly the Transformer's parameters, in order."""
    from minitx.checkpoint import parameter_shapes
    cfg = minitx.Config(n_layer=3, n_head=2, n_embd=8, n_positions=16, vocab_size=30, n_inner=20,
                        tie_word_embeddings=tied, bos_token_id=0)
    with torch.device("meta"):
        model = minitx.Transformer(cfg)
    assert list(parameter_shapes(cfg).items()) == [(n, tuple(p.shape)) for n, p in model.named_parameters()]
