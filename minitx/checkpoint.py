"""GPT-2 checkpoint files: HF tensor names, converting state dicts both ways, reading and writing files.

The only module that knows checkpoint names (c_attn, wte, ...). It needs only a `Config` to know
every tensor's name and shape (`parameter_shapes`), never the model class, so the model can import it.

Two rules hold. (1) A state dict is converted and checked as a whole (names, shapes, finite values)
before any model exists, so a model is never half-loaded. (2) Nothing is unpickled beyond plain
tensors: .bin files go through torch.load(weights_only=True).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import struct
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minitx.config import Config

# ---------------------------------------------------------------------------------------------
# 1. The mapping table. HF keys are written without the "transformer." prefix, which checkpoints
# may or may not carry. HF's Conv1D stores weights as [in, out], as our `x @ W` does: no transpose.

GLOBAL_KEYS = {"wte.weight": "W_E", "wpe.weight": "W_pos", "ln_f.weight": "ln_final.w", "ln_f.bias": "ln_final.b"}
LAYER_KEYS = {  # h.{l}.KEY -> blocks.{l}.NAME
    "ln_1.weight": "ln1.w", "ln_1.bias": "ln1.b", "ln_2.weight": "ln2.w", "ln_2.bias": "ln2.b",
    "attn.c_attn.weight": "attn.W_QKV", "attn.c_attn.bias": "attn.b_QKV",
    "attn.c_proj.weight": "attn.W_O", "attn.c_proj.bias": "attn.b_O",
    "mlp.c_fc.weight": "mlp.W_in", "mlp.c_fc.bias": "mlp.b_in",
    "mlp.c_proj.weight": "mlp.W_out", "mlp.c_proj.bias": "mlp.b_out",
}
IGNORED_LAYER_KEYS = ("attn.bias", "attn.masked_bias")  # causal-mask buffers saved by old checkpoints
LM_HEAD = "lm_head.weight"  # [d_vocab, d_model]; maps to W_U_untied [d_model, d_vocab] when untied
INVERSE = {v: k for k, v in {**GLOBAL_KEYS, **LAYER_KEYS}.items()}


def hf_key(name: str) -> str:
    """minitx parameter name -> HF key without prefix: "blocks.3.attn.W_O" -> "h.3.attn.c_proj.weight"."""
    if name == "W_U_untied":
        return LM_HEAD
    if name.startswith("blocks."):
        _, layer, rest = name.split(".", 2)
        return f"h.{layer}.{INVERSE[rest]}"
    return INVERSE[name]


def parameter_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of minitx's GPT-2 with this config, in Transformer.named_parameters() order."""
    d, d_mlp = cfg.d_model, cfg.d_mlp
    block = {"ln1.w": (d,), "ln1.b": (d,), "attn.W_QKV": (d, 3 * d), "attn.b_QKV": (3 * d,), "attn.W_O": (d, d),
             "attn.b_O": (d,), "ln2.w": (d,), "ln2.b": (d,), "mlp.W_in": (d, d_mlp), "mlp.b_in": (d_mlp,),
             "mlp.W_out": (d_mlp, d), "mlp.b_out": (d,)}
    shapes = {"W_E": (cfg.d_vocab, d), "W_pos": (cfg.n_ctx, d)}
    if not cfg.tie_word_embeddings:  # the model's own parameters come before its blocks'
        shapes["W_U_untied"] = (d, cfg.d_vocab)
    shapes.update({f"blocks.{l}.{k}": s for l in range(cfg.n_layer) for k, s in block.items()})
    shapes.update({"ln_final.w": (d,), "ln_final.b": (d,)})
    return shapes


def listing(what: str, items: list[str], limit: int = 5) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} {what}: {', '.join(items[:limit])}{more}"


def _layers_in(keys) -> int:
    """How many blocks the checkpoint's h.{l}.* names cover (max l + 1; 0 if none)."""
    found = [int(m.group(1)) for k in keys if (m := re.match(r"(?:transformer\.)?h\.(\d+)\.", k))]
    return max(found) + 1 if found else 0


def _describe_fit(cfg: Config, n_tensors: int) -> str:
    return (f"the tensors do not fit a GPT-2 with n_layer={cfg.n_layer}, n_embd={cfg.n_embd}, n_inner={cfg.d_mlp}, "
            f"vocab_size={cfg.vocab_size}, n_positions={cfg.n_positions}, tie_word_embeddings="
            f"{cfg.tie_word_embeddings}; expected the {n_tensors} GPT2LMHeadModel tensors of that shape. ")


def convert_state_dict(hf_state: dict, cfg: Config, dtype: torch.dtype = torch.float32,
                       source: str = "checkpoint") -> dict:
    """HF GPT2LMHeadModel tensors -> the complete minitx state dict, or one ValueError naming every problem
    (missing, unexpected, wrong shape or dtype, NaN or inf values)."""
    if (found := _layers_in(hf_state)) < cfg.n_layer:  # before anything scales with n_layer
        raise ValueError(f"{source}: the config says n_layer={cfg.n_layer} but the checkpoint has tensors for "
                         f"{found} blocks (h.0 .. h.{found - 1}); fix n_layer in config.json")
    shapes = parameter_shapes(cfg)
    wanted = {hf_key(n): n for n in shapes}  # lm_head.weight is in here only when untied
    out, seen, unexpected, wrong, non_finite, lm_head = {}, set(), [], [], [], None
    for key, tensor in hf_state.items():
        short = key.removeprefix("transformer.")
        if short in seen:
            wrong.append(f"{key} (given twice, with and without the 'transformer.' prefix)")
            continue
        seen.add(short)
        if short == LM_HEAD and cfg.tie_word_embeddings:
            lm_head = tensor  # checked against wte below, then dropped: W_U is W_E.T
            continue
        if short.startswith("h.") and short.split(".", 2)[-1] in IGNORED_LAYER_KEYS:
            continue
        name = wanted.get(short)
        if name is None:
            unexpected.append(key)
            continue
        want = shapes[name][::-1] if name == "W_U_untied" else shapes[name]
        if not tensor.is_floating_point() or tuple(tensor.shape) != want:
            wrong.append(f"{key} {list(tensor.shape)} {str(tensor.dtype)[6:]}, expected {list(want)} float")
            continue
        if n_bad := int((~torch.isfinite(tensor)).sum()):  # one NaN makes every later logit NaN
            non_finite.append(f"{key} ({n_bad} of {tensor.numel()})")
        out[name] = (tensor.T if name == "W_U_untied" else tensor).to(dtype).contiguous()
    if lm_head is not None and "W_E" in out and not (
            lm_head.shape == out["W_E"].shape and torch.equal(lm_head.to(dtype), out["W_E"])):
        wrong.append(f"{LM_HEAD} differs from wte.weight although the config has tie_word_embeddings=true "
                     "(set it to false in config.json if this model has its own unembedding)")
    bad = {k.removeprefix("transformer.").split(" ")[0] for k in wrong}
    missing = [hf_key(n) for n in shapes if n not in out and hf_key(n) not in bad]
    problems = [listing(what, items) for what, items in (("missing", missing), ("unexpected", unexpected),
                                                         ("wrong", wrong)) if items]
    if problems:
        raise ValueError(f"{source}: " + _describe_fit(cfg, len(wanted)) + "; ".join(problems))
    if non_finite:
        raise ValueError(f"{source}: every weight must be finite, but {listing('tensors hold NaN or inf', non_finite)}"
                         " (a corrupt file, or a training run that diverged)")
    return out


def to_hf_state_dict(named_parameters, cfg: Config) -> dict:
    """minitx (name, parameter) pairs -> HF GPT2LMHeadModel tensors on the CPU (tied lm_head omitted, as HF saves)."""
    state = {}
    for name, param in named_parameters:
        tensor = param.detach().T if name == "W_U_untied" else param.detach()
        key = hf_key(name)
        state[key if key == LM_HEAD else "transformer." + key] = tensor.to("cpu").contiguous()
    return state


# ---------------------------------------------------------------------------------------------
# 2. Files. Each error names the file and says what would fix it.

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def shard_names(index: Path) -> list[str]:
    """The shard file names a *.index.json lists (plain names in its own folder)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index}: not a valid shard index (need {{'weight_map': {{tensor: file}}}}): {e!r}") from e
    for name in names:  # plain file names only: an index must not point outside its folder
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{index}: shard name {name!r} is not a plain file name")
    return names


def weight_files(directory: Path) -> list[Path]:
    """The weights of a model folder: one file, or the shards its index lists (all present)."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if not name.endswith(".index.json"):
                return [path]
            files = [directory / s for s in shard_names(path)]
            if missing := [f.name for f in files if not f.is_file()]:
                raise FileNotFoundError(f"{path} lists shards that are not there: {listing('missing', missing)}")
            return files
    raise FileNotFoundError(f"{directory}: no weights; expected one of {', '.join(WEIGHT_FILES)}")


def _unreadable(path: Path, e: OSError):
    if isinstance(e, PermissionError):  # not corrupt: deleting it would not help
        return PermissionError(f"{path}: cannot read it: permission denied (check the file's permissions)")
    return None


def read_tensors(path: Path) -> dict:
    """One .safetensors or PyTorch .bin/.pt file -> {name: tensor}; ValueError naming the file otherwise."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            if isinstance(e, OSError) and (err := _unreadable(path, e)):
                raise err from None
            raise ValueError(f"{path}: not a readable safetensors file ({e}); it may be truncated or "
                             "corrupt: delete it and fetch it again") from e
    if path.suffix not in (".bin", ".pt", ".pth", ".ckpt"):
        raise ValueError(f"{path}: not a weights file; give a model directory, a .safetensors file, a PyTorch "
                         ".bin/.pt/.pth file or a *.index.json of shards")
    return _read_pickled(path)


def _read_pickled(path: Path) -> dict:
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint: the file is empty (0 bytes); "
                         "fetch or save it again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's own text advises weights_only=False: we do not repeat it
        text = str(e)
        if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
            raise ValueError(f"{path}: refused: unpickling it would call {found.group(1)}. minitx reads .bin "
                             "files only with torch.load(weights_only=True), because unpickling anything beyond "
                             "plain tensors can run arbitrary code. Use the model's .safetensors file instead."
                             ) from None
        reason = text.partition("WeightsUnpickler error:")[2].strip().split("\n")[0] or text.split("\n")[0]
        raise ValueError(f"{path}: not a readable PyTorch checkpoint of plain tensors ({reason})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        if isinstance(e, OSError) and (err := _unreadable(path, e)):
            raise err from None
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    if isinstance(state, dict) and any(isinstance(v, dict) for v in state.values()):
        inner = next(k for k, v in state.items() if isinstance(v, dict))
        raise ValueError(f"{path}: holds a nested dict under {inner!r}; minitx reads a flat dict of tensor name -> "
                         f"tensor (save checkpoint[{inner!r}] on its own)")
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise ValueError(f"{path}: expected a dict of tensor name -> tensor, got {type(state).__name__}")
    return state


def read_state(files: list[Path]) -> dict:
    """Every tensor of one checkpoint (one file or its shards) -> {name: tensor}."""
    state = {}
    for file in files:
        for key, tensor in read_tensors(file).items():
            if key in state:
                raise ValueError(f"{file}: tensor {key!r} is also in another shard")
            state[key] = tensor
    return state


def config_in_metadata(path: Path) -> str | None:
    """The config.json text save_pretrained stores in a .safetensors file's metadata, if any."""
    try:
        with safe_open(path, "pt") as f:
            return (f.metadata() or {}).get("config")
    except (SafetensorError, OSError) as e:
        if isinstance(e, OSError) and (err := _unreadable(path, e)):
            raise err from None
        raise ValueError(f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt") from e


def check_file_format(name: str, path: Path) -> None:
    """ValueError unless a fetched model file looks like what its name says: JSON parses (to an object),
    a safetensors header parses, a .bin is a zip or pickle, merges.txt is text. Reads only the start."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    looks_html = head.lstrip()[:15].lower().startswith((b"<!doctype", b"<html", b"<head", b"<body"))
    why = None
    if name.endswith(".json"):
        try:
            if not isinstance(json.loads(Path(path).read_text(encoding="utf-8")), dict):
                why = "not a JSON object"
        except (UnicodeDecodeError, ValueError) as e:
            why = f"not valid JSON ({str(e)[:60]})"
    elif name.endswith(".safetensors"):
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
        try:
            with open(path, "rb") as f:
                f.seek(8)
                ok = 0 < n <= 100_000_000 and isinstance(json.loads(f.read(n)), dict)
        except (ValueError, UnicodeDecodeError, OverflowError):
            ok = False
        why = None if ok else "not a safetensors file (its header does not parse)"
    elif name.endswith((".bin", ".pt", ".pth")):
        why = None if head[:2] in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") else \
            "not a PyTorch checkpoint (neither a zip nor a pickle)"
    elif looks_html:
        why = "an HTML page, not a text file"
    if why:
        hint = " (it starts like an HTML page: a proxy or login portal may have answered)" if looks_html else ""
        raise ValueError(f"{name}: {why}{hint}")


def write_atomic(path: Path, text: str) -> None:
    """Write text to path so a reader sees the old file or the new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_pretrained(model, directory) -> Path:
    """Writes config.json and model.safetensors in HF's layout (tied lm_head omitted, as HF saves).
    model: anything with `.cfg` and `.named_parameters()` (a minitx Transformer)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; save_pretrained writes a folder (config.json and "
                              "model.safetensors): give a folder path")
    directory.mkdir(parents=True, exist_ok=True)
    state = to_hf_state_dict(model.named_parameters(), model.cfg)
    hf_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **dataclasses.asdict(model.cfg),
                 "eos_token_id": model.cfg.bos_token_id}
    text = json.dumps(hf_config, indent=2)
    tmp = directory / "model.safetensors.tmp"
    save_file(state, tmp, metadata={"format": "pt", "config": text})  # "format": HF's loader requires it
    os.replace(tmp, directory / "model.safetensors")
    write_atomic(directory / "config.json", text + "\n")
    return directory
