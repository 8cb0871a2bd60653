"""Tests for minitx.loading.download against a local fake hub (http.server on 127.0.0.1).

The fake hub speaks the hub's URL layout and headers: /{repo}/resolve/{revision}/{file} with
X-Repo-Commit; weight files answer with a 302 carrying X-Linked-Etag (their sha256) to a /cdn/ URL,
as the real hub redirects LFS files to its CDN. Each scenario can break one response: cut the
connection mid-file, announce a wrong checksum, stall, or fail with a server error.
"""

import hashlib
import http.server
import io
import json
import re
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from minitx import hub as hub_module, loading
from minitx.loading import DownloadError, download, load, save_pretrained
from tests.conftest import random_model

COMMIT = "c0ffee" + "0" * 34


def checkpoint_files(model, tmp_path, sharded=False, as_bin=False, bin_sharded=False) -> dict:
    out = tmp_path / "src"
    save_pretrained(model, out)
    files = {"config.json": (out / "config.json").read_bytes(), "vocab.json": b'{"a": 0}'}
    weights = (out / "model.safetensors").read_bytes()
    if sharded:  # the same file under a one-shard index: exercises the index + shard path
        files["model.safetensors.index.json"] = json.dumps(
            {"metadata": {}, "weight_map": {"transformer.wte.weight": "model-00001-of-00001.safetensors"}}).encode()
        files["model-00001-of-00001.safetensors"] = weights
    elif as_bin or bin_sharded:
        buffer = io.BytesIO()
        torch.save(load_file(out / "model.safetensors"), buffer)
        name = "pytorch_model-00001-of-00001.bin" if bin_sharded else "pytorch_model.bin"
        files[name] = buffer.getvalue()
        if bin_sharded:
            files["pytorch_model.bin.index.json"] = json.dumps(
                {"metadata": {}, "weight_map": {"transformer.wte.weight": name}}).encode()
    else:
        files["model.safetensors"] = weights
    return files


class FakeHub(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.plan: dict[str, list[str]] = {}  # file name -> how its next responses misbehave
        self.requests: list[str] = []
        self.stop = threading.Event()  # releases stalled handlers at teardown
        self.commit = COMMIT  # what X-Repo-Commit says


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        hub: FakeHub = self.server
        hub.requests.append(self.path)
        if self.path.startswith("/cdn/"):
            repo, filename, mode = self.path[5:].split("/")
            return self.send_bytes(hub.repos[repo.replace("~", "/")][filename], mode)
        head, sep, tail = self.path.partition("/resolve/")
        revision, _, filename = tail.partition("/")
        repo = hub.repos.get(head.lstrip("/"))
        if not sep or repo is None or filename not in repo or revision not in ("main", COMMIT):
            return self.reply(404, {"X-Error-Code": "EntryNotFound"}, b"not found")
        mode = (hub.plan.get(filename) or ["ok"]).pop(0)
        data = repo[filename]
        if mode == "404":
            return self.reply(404, {}, b"not found")
        if mode == "500":
            return self.reply(500, {}, b"server error")
        if filename.endswith((".safetensors", ".bin")):  # LFS: checksum on the redirect, bytes on the CDN
            sha = hashlib.sha256(b"other bytes" if mode == "badsum" else data).hexdigest()
            return self.reply(302, {"Location": f"/cdn/{head.lstrip('/').replace('/', '~')}/{filename}/{mode}",
                                    "X-Repo-Commit": hub.commit, "X-Linked-Etag": f'"{sha}"',
                                    "X-Linked-Size": str(len(data)), "ETag": f'W/"{sha}"'}, b"")
        return self.send_bytes(data, mode, {"X-Repo-Commit": hub.commit,
                                            "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the client hung up first (timeouts, cached blobs)
            pass

    def send_bytes(self, data, mode, headers=None):
        self.send_response(200)
        for key, value in {"Content-Length": str(len(data)), "ETag": '"cdn-etag-not-a-sha"', **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        half = len(data) // 2
        self.wfile.write(data[:half])
        self.wfile.flush()
        if mode == "cut":  # the server promised len(data) bytes and hangs up halfway
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "slow":
            self.server.stop.wait(3.0)
        self.wfile.write(data[half:])

    def reply(self, code, headers, body):
        self.send_response(code)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    for variable in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy", "HTTP_PROXY",
                     "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub_module, "time", SimpleNamespace(sleep=lambda s: None))  # no retry back-off in tests
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def repo_dir(tmp_path, repo_id="org/tiny") -> Path:
    return tmp_path / "hf_home" / "hub" / ("models--" + repo_id.replace("/", "--"))


def assert_nothing_trusted(tmp_path, weights: bytes, monkeypatch, repo_id="org/tiny"):
    """After a failed download: no partial file, no weights blob, no ref, and an offline load refuses."""
    repo = repo_dir(tmp_path, repo_id)
    blobs = list((repo / "blobs").iterdir()) if (repo / "blobs").exists() else []
    assert not [b for b in blobs if b.name.endswith(".incomplete")], blobs
    assert not [b for b in blobs if b.read_bytes() == weights], "the failed file was kept"
    assert not (repo / "refs").exists()
    assert loading.cached_snapshot(repo_id) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=f"minitx download {repo_id}"):
        load(repo_id)
    monkeypatch.delenv("HF_HUB_OFFLINE")


def assert_loads_as(model, repo_id="org/tiny"):
    tokens = torch.arange(10).reshape(2, 5)
    torch.testing.assert_close(load(repo_id)(tokens), model(tokens), atol=0, rtol=0)


def test_download_then_load_offline(hub, tmp_path, monkeypatch):
    model = random_model()
    hub.repos["org/tiny"] = files = checkpoint_files(model, tmp_path)
    snapshot = download("org/tiny")
    repo = repo_dir(tmp_path)
    assert snapshot == repo / "snapshots" / COMMIT
    assert (repo / "refs" / "main").read_text() == COMMIT
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert (snapshot / "model.safetensors").resolve() == (repo / "blobs" / sha).resolve()
    assert (snapshot / "model.safetensors").is_symlink() and (snapshot / "vocab.json").is_file()
    assert not (snapshot / "merges.txt").exists()  # absent on the hub: a 404 there is fine
    # After config.json the files come from the commit it named, not from the moving branch.
    assert f"/org/tiny/resolve/{COMMIT}/model.safetensors" in hub.requests
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_loads_as(model)
    assert download("org/tiny") == snapshot  # cached: fine even offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert download("org/tiny") == snapshot and len(hub.requests) == n  # cached: no network at all
    blob = repo / "blobs" / sha
    before = blob.stat().st_ino, blob.stat().st_mtime_ns
    assert download("org/tiny", force=True) == snapshot  # asks again; keeps the verified weights blob
    assert len(hub.requests) > n and (blob.stat().st_ino, blob.stat().st_mtime_ns) == before


def test_load_downloads_when_missing(hub, tmp_path):
    model = random_model(seed=3, tie_word_embeddings=False)
    hub.repos["tiny"] = checkpoint_files(model, tmp_path)  # a repo id without an org
    assert_loads_as(model, "tiny")
    assert (repo_dir(tmp_path, "tiny") / "refs" / "main").is_file()


@pytest.mark.parametrize("layout", ["sharded", "as_bin", "bin_sharded"])
def test_fallbacks_to_index_and_bin(hub, tmp_path, layout):
    model = random_model()
    hub.repos["org/tiny"] = checkpoint_files(model, tmp_path, **{layout: True})
    download("org/tiny")
    assert_loads_as(model)


def test_a_commit_that_is_not_a_hash_writes_nothing(hub, tmp_path):
    """The server's X-Repo-Commit becomes a folder name in the cache: '../..' must not lead out of it."""
    hub.repos["org/tiny"] = checkpoint_files(random_model(), tmp_path)
    hub.commit = "../../../../escaped"
    with pytest.raises(ValueError, match="a commit is 40 hex digits, so nothing was written"):
        download("org/tiny")
    assert not list(tmp_path.rglob("escaped")) and not (repo_dir(tmp_path) / "snapshots").exists()


@pytest.mark.parametrize("variables, expected", [
    ({"HF_HUB_CACHE": "a", "HUGGINGFACE_HUB_CACHE": "b", "HF_HOME": "c", "XDG_CACHE_HOME": "d"}, "a"),
    ({"HUGGINGFACE_HUB_CACHE": "b", "HF_HOME": "c", "XDG_CACHE_HOME": "d"}, "b"),
    ({"HF_HOME": "c", "XDG_CACHE_HOME": "d"}, "c/hub"),
    ({"XDG_CACHE_HOME": "d"}, "d/huggingface/hub"),
    ({}, "~/.cache/huggingface/hub")])
def test_cache_folder_follows_huggingface_hub(monkeypatch, variables, expected):
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    assert loading.hub_cache_dir() == Path(expected).expanduser()


def test_connection_cut_mid_file_then_retry(hub, tmp_path, monkeypatch):
    model = random_model()
    hub.repos["org/tiny"] = files = checkpoint_files(model, tmp_path)
    hub.plan["model.safetensors"] = ["cut"]
    with pytest.raises(DownloadError, match=r"model.safetensors.*(IncompleteRead|closed after)"):
        download("org/tiny", retries=0)
    assert_nothing_trusted(tmp_path, files["model.safetensors"], monkeypatch)
    download("org/tiny", retries=0)
    assert_loads_as(model)


def test_transient_failures_are_retried_within_one_call(hub, tmp_path):
    model = random_model()
    hub.repos["org/tiny"] = checkpoint_files(model, tmp_path)
    hub.plan["model.safetensors"] = ["cut", "500"]
    download("org/tiny", retries=2)
    assert sum("model.safetensors" in r and "/resolve/" in r for r in hub.requests) == 3
    assert_loads_as(model)


def test_wrong_checksum_then_retry(hub, tmp_path, monkeypatch):
    model = random_model()
    hub.repos["org/tiny"] = files = checkpoint_files(model, tmp_path)
    hub.plan["model.safetensors"] = ["badsum", "badsum"]
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("org/tiny", retries=1)
    assert_nothing_trusted(tmp_path, files["model.safetensors"], monkeypatch)
    download("org/tiny")
    assert_loads_as(model)


def test_slow_server_times_out_then_retry(hub, tmp_path, monkeypatch):
    model = random_model()
    hub.repos["org/tiny"] = files = checkpoint_files(model, tmp_path)
    hub.plan["model.safetensors"] = ["slow"]
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"timed out after 0.3 s waiting for http://127.*model.safetensors"):
        download("org/tiny", timeout=0.3, retries=0)
    assert time.monotonic() - start < 2.5
    assert_nothing_trusted(tmp_path, files["model.safetensors"], monkeypatch)
    download("org/tiny", timeout=5)
    assert_loads_as(model)


def test_not_found(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"HTTP 404: org/nope@main or this file was not found.*check"):
        download("org/nope")
    hub.repos["org/noweights"] = {"config.json": b"{}"}
    with pytest.raises(FileNotFoundError, match="has none of model.safetensors, model.safetensors.index.json, "
                                                "pytorch_model.bin, pytorch_model.bin.index.json"):
        download("org/noweights")
    assert not (repo_dir(tmp_path, "org/noweights") / "refs").exists()


def test_missing_shard_is_an_error(hub, tmp_path, monkeypatch):
    model = random_model()
    hub.repos["org/tiny"] = files = checkpoint_files(model, tmp_path, sharded=True)
    hub.plan["model-00001-of-00001.safetensors"] = ["404"]
    with pytest.raises(FileNotFoundError, match="model-00001-of-00001.safetensors"):
        download("org/tiny", retries=0)
    assert_nothing_trusted(tmp_path, files["model-00001-of-00001.safetensors"], monkeypatch)


def test_bad_arguments_touch_nothing(hub):
    for bad in ("../x", "a/b/c"):
        with pytest.raises(ValueError, match="not a valid hub repo id"):
            download(bad)
    with pytest.raises(ValueError, match="revision"):
        download("org/tiny", revision="../../etc")
    assert hub.requests == []


HTML = b"<!DOCTYPE html><html><body>Please log in to the proxy</body></html>"


@pytest.mark.parametrize("bad", ["config.json", "model.safetensors"])
def test_a_proxy_page_is_not_cached_as_a_model(hub, tmp_path, monkeypatch, bad):
    """A server answering 200 with an HTML page: the download fails naming the file, nothing is trusted."""
    model = random_model()
    files = checkpoint_files(model, tmp_path)
    hub.repos["org/tiny"] = {**files, bad: HTML}
    with pytest.raises(DownloadError, match=rf"{bad}: the server sent {bad}: .*it starts like an HTML page: a proxy"):
        download("org/tiny")
    assert_nothing_trusted(tmp_path, files["model.safetensors"], monkeypatch)
    assert not [b for b in (repo_dir(tmp_path) / "blobs").iterdir() if b.read_bytes() == HTML]


def test_a_damaged_cache_entry_names_the_folder_to_delete(hub, tmp_path, monkeypatch):
    model = random_model()
    hub.repos["org/tiny"] = checkpoint_files(model, tmp_path)
    snapshot = download("org/tiny")
    (snapshot / "config.json").resolve().write_bytes(HTML)  # damaged after the download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=rf"The cached copy of org/tiny is damaged: delete the folder "
                                         rf"{re.escape(str(repo_dir(tmp_path)))} and load again"):
        load("org/tiny")


def test_an_unreadable_weights_file_is_a_permission_error_not_corruption(tmp_path, monkeypatch):
    save_pretrained(random_model(), tmp_path / "m")

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr("minitx.checkpoint.load_file", denied)
    with pytest.raises(PermissionError, match=r"model.safetensors: cannot read it: permission denied") as info:
        load(tmp_path / "m")
    assert "delete" not in str(info.value) and "corrupt" not in str(info.value)
