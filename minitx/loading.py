"""GPT-2 checkpoints in and out of minitx: the only module that knows checkpoint names.

    load("gpt2")                      # hub id: Hugging Face cache first, download only if missing
    load("path/to/dir")               # config.json + model.safetensors (or sharded, or pytorch_model.bin)
    load("weights.safetensors")       # config.json beside it, or the config stored in its metadata
    save_pretrained(model, "out/")    # HF's own layout: transformers.GPT2LMHeadModel.from_pretrained reads it
    download("gpt2")                  # stdlib-only downloader into the HF cache layout

Three rules hold throughout. (1) A state dict is converted and checked as a whole before any model
exists, so a model is never returned half-loaded. (2) Nothing is unpickled beyond plain tensors:
.bin files go through torch.load(weights_only=True). (3) A downloaded file gets its final name only
after its size and sha256 are checked, and refs/{revision} is written last, so a failed download
leaves nothing that a later load would trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import pickle
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minitx.model import Config, Transformer

__all__ = ["load", "save_pretrained", "download", "DownloadError", "convert_state_dict", "hf_key",
           "hub_cache_dir", "cached_snapshot", "is_valid_repo_id"]

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
_INVERSE = {v: k for k, v in {**GLOBAL_KEYS, **LAYER_KEYS}.items()}


def hf_key(name: str) -> str:
    """minitx parameter name -> HF key without prefix: "blocks.3.attn.W_O" -> "h.3.attn.c_proj.weight"."""
    if name == "W_U_untied":
        return LM_HEAD
    if name.startswith("blocks."):
        _, layer, rest = name.split(".", 2)
        return f"h.{layer}.{_INVERSE[rest]}"
    return _INVERSE[name]


def _skeleton(cfg: Config) -> Transformer:
    # On the meta device: shapes without memory, so loading gpt2-xl does not hold two copies.
    with torch.device("meta"):
        return Transformer(cfg)


def _listing(what: str, items: list[str], limit: int = 5) -> str:
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} {what}: {', '.join(items[:limit])}{more}"


def convert_state_dict(hf_state: dict, cfg: Config, dtype: torch.dtype = torch.float32,
                       source: str = "checkpoint") -> dict:
    """HF GPT2LMHeadModel tensors -> the complete minitx state dict, or one ValueError naming every problem."""
    shapes = {n: tuple(p.shape) for n, p in _skeleton(cfg).named_parameters()}
    wanted = {hf_key(n): n for n in shapes}  # lm_head.weight is in here only when untied
    out, seen, unexpected, wrong, lm_head = {}, set(), [], [], None
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
        out[name] = (tensor.T if name == "W_U_untied" else tensor).to(dtype).contiguous()
    if lm_head is not None and "W_E" in out and not (
            lm_head.shape == out["W_E"].shape and torch.equal(lm_head.to(dtype), out["W_E"])):
        wrong.append(f"{LM_HEAD} differs from wte.weight although the config has tie_word_embeddings=true "
                     "(set it to false in config.json if this model has its own unembedding)")
    bad = {k.removeprefix("transformer.").split(" ")[0] for k in wrong}
    missing = [hf_key(n) for n in shapes if n not in out and hf_key(n) not in bad]
    problems = [_listing(what, items) for what, items in (("missing", missing), ("unexpected", unexpected),
                                                          ("wrong", wrong)) if items]
    if problems:
        raise ValueError(f"{source}: the tensors do not fit a GPT-2 with n_layer={cfg.n_layer}, n_embd={cfg.n_embd}, "
                         f"n_inner={cfg.d_mlp}, vocab_size={cfg.vocab_size}, n_positions={cfg.n_positions}, "
                         f"tie_word_embeddings={cfg.tie_word_embeddings}; expected the {len(wanted)} "
                         f"GPT2LMHeadModel tensors of that shape. " + "; ".join(problems))
    return out


# ---------------------------------------------------------------------------------------------
# 2. Reading files. Each error names the file and says what would fix it.

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _config_from(hf, source: str) -> Config:
    if not isinstance(hf, dict):
        raise ValueError(f"{source}: a config must be a JSON object, got {type(hf).__name__}")
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"{source}: model_type={hf['model_type']!r}; minitx loads GPT-2 checkpoints only")
    try:  # the fields minitx uses; HF's other keys are ignored
        return Config(**{k: v for k, v in hf.items() if k in {f.name for f in dataclasses.fields(Config)}})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: {e}") from e


def _read_config(path: Path) -> Config:
    try:
        return _config_from(json.loads(path.read_text(encoding="utf-8")), str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the model config ({e})") from e


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index}: not a valid shard index (need {{'weight_map': {{tensor: file}}}}): {e!r}") from e
    for name in names:  # plain file names only: an index must not point outside its folder
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"{index}: shard name {name!r} is not a plain file name")
    return names


def _weight_files(directory: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if not name.endswith(".index.json"):
                return [path]
            files = [directory / s for s in _shards(path)]
            if missing := [f.name for f in files if not f.is_file()]:
                raise FileNotFoundError(f"{path} lists shards that are not there: {_listing('missing', missing)}")
            return files
    raise FileNotFoundError(f"{directory}: no weights; expected one of {', '.join(WEIGHT_FILES)}")


def _read_tensors(path: Path) -> dict:
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e}); it may be truncated or "
                             "corrupt: delete it and fetch it again") from e
    if path.suffix not in (".bin", ".pt", ".pth", ".ckpt"):
        raise ValueError(f"{path}: not a weights file; give a model directory, a .safetensors file, a PyTorch "
                         ".bin/.pt/.pth file or a *.index.json of shards")
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
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise ValueError(f"{path}: expected a dict of tensor name -> tensor, got {type(state).__name__}")
    return state


def _local(path: Path) -> tuple[Config, list[Path]]:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; a model directory needs config.json and weights")
        return _read_config(path / "config.json"), _weight_files(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or directory")
    files = [path.parent / s for s in _shards(path)] if path.name.endswith(".index.json") else [path]
    beside = path.parent / "config.json"
    if beside.is_file():
        return _read_config(beside), files
    if path.suffix == ".safetensors":  # save_pretrained also stores the config in the metadata
        try:
            with safe_open(path, "pt") as f:
                text = (f.metadata() or {}).get("config")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e}); it may be truncated or corrupt") from e
        if text:
            try:
                return _config_from(json.loads(text), f"{path} (metadata 'config')"), files
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: the config in its metadata is not valid JSON ({e})") from e
    raise FileNotFoundError(f"{path}: no model config found: put the model's config.json next to the file "
                            "(or save it with minitx.save_pretrained, which stores the config in the file)")


def load(name_or_path, *, dtype: torch.dtype = torch.float32, device="cpu", revision: str = "main") -> Transformer:
    """A local directory, a .safetensors/.bin file or a hub repo id -> Transformer in eval mode, no grads.

    Float16/bfloat16 checkpoints are converted to `dtype`. Hub ids are read from the Hugging Face
    cache when present (no network), else downloaded unless HF_HUB_OFFLINE=1.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    if isinstance(name_or_path, os.PathLike) or (name_or_path and Path(str(name_or_path)).exists()):
        cfg, files = _local(Path(name_or_path))
    elif not is_valid_repo_id(name_or_path):
        raise ValueError(f"{name_or_path!r} is neither an existing file or directory nor a valid hub repo id "
                         "(name or org/name of letters, digits, '_', '.', '-'; at most one '/', no '..' or '--', "
                         "not starting or ending with '.' or '-', at most 96 characters)")
    else:
        snapshot = cached_snapshot(name_or_path, revision) or _download_for_load(name_or_path, revision)
        cfg, files = _read_config(snapshot / "config.json"), _weight_files(snapshot)
    state = {}
    for file in files:
        for key, tensor in _read_tensors(file).items():
            if key in state:
                raise ValueError(f"{file}: tensor {key!r} is also in another shard")
            state[key] = tensor
    source = str(files[0] if len(files) == 1 else files[0].parent)
    converted = convert_state_dict(state, cfg, dtype, source)
    del state  # the converted copies are all we keep
    model = _skeleton(cfg)
    model.load_state_dict(converted, strict=True, assign=True)
    return model.to(device).eval().requires_grad_(False)


def save_pretrained(model: Transformer, directory) -> Path:
    """Writes config.json and model.safetensors in HF's layout (tied lm_head omitted, as HF saves)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, param in model.named_parameters():
        tensor = param.detach().T if name == "W_U_untied" else param.detach()
        key = hf_key(name)
        state[key if key == LM_HEAD else "transformer." + key] = tensor.to("cpu").contiguous()
    hf_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], **dataclasses.asdict(model.cfg),
                 "eos_token_id": model.cfg.bos_token_id}
    text = json.dumps(hf_config, indent=2)
    tmp = directory / "model.safetensors.tmp"
    save_file(state, tmp, metadata={"format": "pt", "config": text})  # "format": HF's loader requires it
    os.replace(tmp, directory / "model.safetensors")
    _write_atomic(directory / "config.json", text + "\n")
    return directory


# ---------------------------------------------------------------------------------------------
# 3. The hub: repo ids, the cache (huggingface_hub's layout, so both tools share one cache), download.

_ID_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_ID_PART}/)?{_ID_PART}")
_SHA1, _SHA256 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")
# The canonical names of the original GPT-2 repos; the cache may hold either spelling.
ALIASES = {**{n: f"openai-community/{n}" for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")},
           "distilgpt2": "distilbert/distilgpt2"}
DEFAULT_ENDPOINT = "https://huggingface.co"


class DownloadError(OSError):
    """A download failed (cut short, bad checksum, server error); nothing partial was kept."""


def is_valid_repo_id(repo_id) -> bool:
    return (isinstance(repo_id, str) and len(repo_id) <= 96 and bool(_REPO_ID.fullmatch(repo_id))
            and ".." not in repo_id and "--" not in repo_id and not repo_id.endswith(".git"))


def _check_revision(revision) -> None:
    if not (isinstance(revision, str) and re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", revision)
            and ".." not in revision):
        raise ValueError(f"revision {revision!r} is not a valid branch, tag or commit name")


def hub_cache_dir() -> Path:
    """huggingface_hub's rule: HF_HUB_CACHE, else the older HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, where
    HF_HOME defaults to $XDG_CACHE_HOME/huggingface (XDG_CACHE_HOME defaults to ~/.cache)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = Path(os.environ["XDG_CACHE_HOME"]).expanduser() if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return xdg / "huggingface" / "hub"


def _repo_dir(repo_id: str) -> Path:
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def _offline() -> str | None:
    """The name of the variable that forbids network access, if one is set."""
    return next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
                 if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")), None)


def cached_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The cached snapshot folder holding config.json and complete weights, or None. No network."""
    if not is_valid_repo_id(repo_id):  # it becomes a folder name: nothing may lead outside the cache
        raise ValueError(f"{repo_id!r} is not a valid hub repo id (name or org/name)")
    _check_revision(revision)
    inverse = {v: k for k, v in ALIASES.items()}
    for name in dict.fromkeys([repo_id, ALIASES.get(repo_id, repo_id), inverse.get(repo_id, repo_id)]):
        repo = _repo_dir(name)
        try:
            commit = revision if _SHA1.fullmatch(revision) else (repo / "refs" / revision).read_text().strip()
        except OSError:
            continue
        snapshot = repo / "snapshots" / commit
        if not commit or Path(commit).name != commit or not (snapshot / "config.json").is_file():
            continue
        try:
            _weight_files(snapshot)
            return snapshot
        except (OSError, ValueError):  # incomplete: a download must fill it in
            continue
    return None


def _download_for_load(repo_id: str, revision: str) -> Path:
    if variable := _offline():
        command = f"minitx download {repo_id}" + (f" --revision {revision}" if revision != "main" else "")
        raise FileNotFoundError(
            f"{repo_id!r} (revision {revision!r}) is not in the Hugging Face cache at {hub_cache_dir()}, and "
            f"{variable} is set, so nothing is downloaded. Run `{command}` on a machine that is online (with "
            "the same HF_HOME or HF_HUB_CACHE), or pass a local directory (none of that name exists).")
    return download(repo_id, revision)


def download(repo_id: str, revision: str = "main", *, endpoint: str | None = None, timeout: float = 30.0,
             retries: int = 2, force: bool = False) -> Path:
    """Fetches config.json, the weights and vocab.json/merges.txt into the HF cache -> the snapshot folder.

    A complete cached snapshot is returned without network access unless `force`. Endpoint: argument,
    else $HF_ENDPOINT, else https://huggingface.co. Each file is retried `retries` times on transient errors.
    """
    if not is_valid_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a valid hub repo id (name or org/name)")
    if not force and (snapshot := cached_snapshot(repo_id, revision)):
        return snapshot
    if variable := _offline():
        raise OSError(f"{variable} is set: not downloading {repo_id!r}; unset it on a machine that is online")
    base = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    repo = _repo_dir(repo_id)

    def fetch(filename: str, rev: str, required: bool = True):
        url = f"{base}/{repo_id}/resolve/{urllib.parse.quote(rev, safe='')}/{urllib.parse.quote(filename)}"
        return _fetch(url, repo / "blobs", timeout, retries, required, f"{repo_id}@{revision}")

    config_blob, commit = fetch("config.json", revision)
    if commit is not None and not _SHA1.fullmatch(commit):  # it becomes a folder name inside the cache
        raise ValueError(f"{base}: the server named commit {commit[:60]!r} for {repo_id}@{revision}; a commit is "
                         "40 hex digits, so nothing was written")
    commit = commit or revision.replace("/", "--")  # no header: the revision name stands in for the commit
    rev = commit if _SHA1.fullmatch(commit) else revision  # the rest from the same commit, even if main moves
    files = {"config.json": config_blob}
    for name in WEIGHT_FILES:
        if (got := fetch(name, rev, required=False)) is None:
            continue
        files[name] = got[0]
        if name.endswith(".index.json"):
            files.update({shard: fetch(shard, rev)[0] for shard in _shards(got[0])})
        break
    else:
        raise FileNotFoundError(f"{repo_id}@{revision}: the repo has none of {', '.join(WEIGHT_FILES)}")
    for name in ("vocab.json", "merges.txt"):
        if (got := fetch(name, rev, required=False)) is not None:
            files[name] = got[0]
    snapshot = repo / "snapshots" / commit
    # The weights file (or the index, after its shards) is linked last: until then the snapshot looks
    # incomplete to cached_snapshot, whatever the revision.
    for name in sorted(files, key=lambda n: n in WEIGHT_FILES):
        _link(files[name], snapshot / name)
    if not _SHA1.fullmatch(revision):  # last: only now does a load by name find this snapshot
        _write_atomic(repo / "refs" / revision, commit)
    return snapshot


def _fetch(url, blobs, timeout, retries, required, what):
    """One file, retried on transient errors -> (blob path, commit) or None (absent, not required)."""
    error: Exception | None = None
    for attempt in range(max(0, retries) + 1):
        if attempt:
            time.sleep(min(0.25 * 2 ** attempt, 4.0))
        try:
            return _fetch_once(url, blobs, timeout)
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in (401, 404):  # the hub answers 401 for repos that do not exist (or are private)
                if not required:
                    return None
                raise FileNotFoundError(f"{url}: HTTP {e.code}: {what} or this file was not found on the hub; "
                                        "check the repo name and revision (private and gated repos are "
                                        "not supported)") from None
            error = DownloadError(f"{url}: HTTP {e.code} {e.reason}")
            if e.code < 500 and e.code != 429:  # other client errors will not go away by retrying
                raise error from None
        except (TimeoutError, urllib.error.URLError) as e:
            if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
                error = TimeoutError(f"timed out after {timeout:g} s waiting for {url}; the server is slow "
                                     "or unreachable: try again, or pass a larger timeout")
            else:
                error = DownloadError(f"{url}: cannot connect ({e.reason})")
        except DownloadError as e:
            error = e
        except (http.client.HTTPException, OSError) as e:
            error = DownloadError(f"{url}: download failed ({type(e).__name__}: {e}); nothing was kept")
    raise error


def _fetch_once(url: str, blobs: Path, timeout: float) -> tuple[Path, str | None]:
    hops = []  # headers of each response, redirects included: the hub's checksum is on its 302,

    class Recorder(urllib.request.HTTPRedirectHandler):  # not on the CDN response that follows
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            hops.append(headers)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    request = urllib.request.Request(url, headers={"User-Agent": "minitx", "Accept-Encoding": "identity"})
    with urllib.request.build_opener(Recorder).open(request, timeout=timeout) as response:
        hops.append(response.headers)

        def first(header: str) -> str | None:  # the earliest hop that sent it: the hub before any CDN
            return next((h[header] for h in hops if h.get(header)), None)

        commit = first("X-Repo-Commit")
        etag = re.sub(r"^W/", "", (first("X-Linked-Etag") or first("ETag") or "").strip()).strip('"')
        sha256 = etag.lower() if _SHA256.fullmatch(etag.lower()) else None
        size = response.headers.get("Content-Length") or first("X-Linked-Size")
        size = int(size) if size and size.isdigit() else None
        if sha256 and (blobs / sha256).is_file():  # verified when it was written
            return blobs / sha256, commit
        blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=blobs, suffix=".incomplete")
        try:
            digest, got = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
            if size is not None and got != size:
                raise DownloadError(f"{url}: the connection closed after {got} of {size} bytes; nothing was kept")
            if sha256 and digest.hexdigest() != sha256:
                raise DownloadError(f"{url}: checksum mismatch: the hub announced sha256 {sha256}, the bytes "
                                    f"hash to {digest.hexdigest()}; the file was discarded")
            name = etag if re.fullmatch(r"[A-Za-z0-9_-]{8,128}", etag) else digest.hexdigest()
            os.chmod(tmp, 0o644)
            os.replace(tmp, blobs / name)  # atomic: the blob appears complete and verified, or not at all
            return blobs / name, commit
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _link(blob: Path, dest: Path) -> None:
    """snapshots/{commit}/{file} -> ../../blobs/{etag}, as huggingface_hub does; a copy where links fail."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".linking")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, dest.parent), tmp)
    except OSError:
        shutil.copyfile(blob, tmp)
    os.replace(tmp, dest)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
