"""The Hugging Face hub cache and downloads: repo ids, finding a cached snapshot, fetching a model.

    cached_snapshot("gpt2")           # the cached snapshot folder, or None; no network
    download("gpt2")                  # stdlib-only downloader into huggingface_hub's cache layout

The cache layout is huggingface_hub's, so both tools share one cache. A downloaded file gets its
final name only after its size and sha256 are checked and its format looks right (a proxy's HTML
page is not a model), and refs/{revision} is written last, so a failed download leaves nothing that
a later load would trust.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import numbers
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from minitx.checkpoint import WEIGHT_FILES, check_file_format, shard_names, weight_files, write_atomic

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


def repo_dir(repo_id: str) -> Path:
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
        repo = repo_dir(name)
        try:
            commit = revision if _SHA1.fullmatch(revision) else (repo / "refs" / revision).read_text().strip()
        except OSError:
            continue
        snapshot = repo / "snapshots" / commit
        if not commit or Path(commit).name != commit or not (snapshot / "config.json").is_file():
            continue
        try:
            weight_files(snapshot)
            return snapshot
        except (OSError, ValueError):  # incomplete: a download must fill it in
            continue
    return None


def download_for_load(repo_id: str, revision: str) -> Path:
    """The snapshot for load(): downloaded unless HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids it."""
    if variable := _offline():
        command = f"minitx download {repo_id}" + (f" --revision {revision}" if revision != "main" else "")
        raise FileNotFoundError(
            f"{repo_id!r} (revision {revision!r}) is not in the Hugging Face cache at {hub_cache_dir()}, and "
            f"{variable} is set, so nothing is downloaded. Run `{command}` on a machine that is online (with "
            "the same HF_HOME or HF_HUB_CACHE), or pass a local directory (none of that name exists).")
    return download(repo_id, revision)


def _check_download_args(repo_id, timeout, retries) -> None:
    if not is_valid_repo_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a valid hub repo id (name or org/name)")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout={timeout!r} is not allowed: seconds to wait for the server, a number > 0")
    if isinstance(retries, bool) or not isinstance(retries, numbers.Integral) or retries < 0:
        raise ValueError(f"retries={retries!r} is not allowed: how often to retry a failed file, an int >= 0")


def download(repo_id: str, revision: str = "main", *, endpoint: str | None = None, timeout: float = 30.0,
             retries: int = 2, force: bool = False) -> Path:
    """Fetches config.json, the weights and vocab.json/merges.txt into the HF cache -> the snapshot folder.

    A complete cached snapshot is returned without network access unless `force`. Endpoint: argument,
    else $HF_ENDPOINT, else https://huggingface.co. Each file is retried `retries` times on transient errors.
    """
    _check_download_args(repo_id, timeout, retries)
    if not force and (snapshot := cached_snapshot(repo_id, revision)):
        return snapshot
    base = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if not isinstance(base, str) or urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        where = "endpoint" if endpoint else "HF_ENDPOINT"
        raise ValueError(f"{where}={base!r} is not a hub address; give an http(s) URL such as {DEFAULT_ENDPOINT}")
    if variable := _offline():
        raise OSError(f"{variable} is set: not downloading {repo_id!r}; unset it on a machine that is online")
    repo = repo_dir(repo_id)

    def fetch(filename: str, rev: str, required: bool = True):
        url = f"{base}/{repo_id}/resolve/{urllib.parse.quote(rev, safe='')}/{urllib.parse.quote(filename)}"
        got = _fetch(url, repo / "blobs", timeout, retries, required, f"{repo_id}@{revision}")
        if got is not None:
            try:
                check_file_format(filename, got[0])
            except ValueError as e:  # never cache what is not the file it claims to be
                got[0].unlink(missing_ok=True)
                raise DownloadError(f"{url}: the server sent {e}; nothing was kept") from None
        return got

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
            files.update({shard: fetch(shard, rev)[0] for shard in shard_names(got[0])})
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
        write_atomic(repo / "refs" / revision, commit)
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
