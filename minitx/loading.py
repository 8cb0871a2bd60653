"""Loading a GPT-2 into minitx: find the checkpoint (a local path or a hub id), check it, build the model.

    load("gpt2")                      # hub id: Hugging Face cache first, download only if missing
    load("path/to/dir")               # config.json + model.safetensors (or sharded, or pytorch_model.bin)
    load("weights.safetensors")       # config.json beside it, or the config stored in its metadata
    save_pretrained(model, "out/")    # HF's own layout: transformers.GPT2LMHeadModel.from_pretrained reads it
    download("gpt2")                  # stdlib-only downloader into the HF cache layout

The pieces live one floor down: minitx/config.py (Config), minitx/checkpoint.py (tensor names, files),
minitx/hub.py (cache and downloads). Their public names are re-exported here.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import torch

from minitx.checks import check_device
from minitx.checkpoint import (config_in_metadata, convert_state_dict, hf_key, read_state, save_pretrained,
                               shard_names, weight_files)
from minitx.config import Config, config_from_dict, read_config
from minitx.hub import (DownloadError, cached_snapshot, download, download_for_load, hub_cache_dir,
                        is_valid_repo_id)
from minitx.model import Transformer
from minitx.shipped import shipped_models, shipped_path

__all__ = ["load", "save_pretrained", "download", "DownloadError", "convert_state_dict", "hf_key",
           "hub_cache_dir", "cached_snapshot", "is_valid_repo_id"]


def _local(path: Path) -> tuple[Config, list[Path]]:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; a model directory needs config.json and weights")
        return read_config(path / "config.json"), weight_files(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    files = [path.parent / s for s in shard_names(path)] if path.name.endswith(".index.json") else [path]
    beside = path.parent / "config.json"
    if beside.is_file():
        return read_config(beside), files
    if path.suffix == ".safetensors" and (text := config_in_metadata(path)):  # save_pretrained stores it there
        try:
            return config_from_dict(json.loads(text), f"{path} (metadata 'config')"), files
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: the config in its metadata is not valid JSON ({e})") from e
    raise FileNotFoundError(f"{path}: no model config found: put the model's config.json next to the file "
                            "(or save it with minitx.save_pretrained, which stores the config in the file)")


def _mistyped_path(name: str) -> None:
    """FileNotFoundError for a name that reads as a local path whose folder exists ("weights/english-6"),
    before it is tried as a hub id; with the closest names in that folder."""
    path = Path(name)
    if path.parent == Path(".") or not path.parent.is_dir():
        return
    close = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(str(path.parent / c) for c in close)}?" if close else ""
    hub = f" For the hub repo of that name, call minitx.download({name!r}) first." if is_valid_repo_id(name) else ""
    raise FileNotFoundError(f"{name!r}: no such local file or directory (the folder {path.parent} exists){hint}{hub}")


def _mistyped_shipped_name(name: str) -> None:
    """FileNotFoundError for a name close to a shipped model's ("english6l"), before it is tried as a hub id."""
    shipped = shipped_models()
    close = difflib.get_close_matches(name.removeprefix("weights/"), shipped, n=1, cutoff=0.8)
    if close and "/" not in name.removeprefix("weights/"):
        raise FileNotFoundError(f"{name!r} is not a shipped model; did you mean {close[0]!r}? (shipped: "
                                f"{', '.join(shipped)}; a local path or a hub id also works. For the hub repo of "
                                f"that name, call minitx.download({name!r}) first.)")


def _snapshot(repo_id: str, revision: str) -> Path:
    snapshot = cached_snapshot(repo_id, revision)
    if snapshot is None:
        _mistyped_path(repo_id)
        _mistyped_shipped_name(repo_id)
        try:
            snapshot = download_for_load(repo_id, revision)
        except OSError as e:  # offline, not found, cannot connect: say what else a name may be
            raise type(e)(f"{e} ({repo_id!r} is also not a local path nor a shipped model: "
                          f"{', '.join(shipped_models())})") from e
    return snapshot


def load(name_or_path, *, dtype: torch.dtype = torch.float32, device="cpu", revision: str = "main") -> Transformer:
    """A local directory, a .safetensors/.bin file or a hub repo id -> Transformer in eval mode, no grads.

    Float16/bfloat16 checkpoints are converted to `dtype`. Hub ids are read from the Hugging Face
    cache when present (no network), else downloaded unless HF_HUB_OFFLINE=1. Weights that are NaN or
    inf are refused, naming the tensor.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    device = check_device(device)  # before any loading work
    name_or_path = shipped_path(name_or_path) or name_or_path  # "english-6l": the packaged copy, before the hub
    if isinstance(name_or_path, os.PathLike) or (name_or_path and Path(str(name_or_path)).exists()):
        cfg, files = _local(Path(name_or_path))
        source = str(files[0] if len(files) == 1 else files[0].parent)
        converted = convert_state_dict(read_state(files), cfg, dtype, source)
    elif not is_valid_repo_id(name_or_path):
        if isinstance(name_or_path, str) and name_or_path:
            _mistyped_path(name_or_path)
        raise ValueError(f"{name_or_path!r} is neither an existing file or directory nor a valid hub repo id "
                         "(name or org/name of letters, digits, '_', '.', '-'; at most one '/', no '..' or '--', "
                         "not starting or ending with '.' or '-', at most 96 characters)")
    else:
        snapshot = _snapshot(name_or_path, revision)
        try:
            cfg, files = read_config(snapshot / "config.json"), weight_files(snapshot)
            converted = convert_state_dict(read_state(files), cfg, dtype, str(snapshot))
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{e}. The cached copy of {name_or_path} is damaged: delete the folder "
                          f"{snapshot.parents[1]} and load again to download it afresh") from e
    with torch.device("meta"):  # shapes without memory: loading gpt2-xl does not hold two copies
        model = Transformer(cfg)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)
