"""The built wheel carries the shipped models and the tokenizer, and nothing from tests/ or scripts/;
shipped models resolve by short name from any directory; `python -m minitx` and `--version` work.

The wheel is built from a copy of the source tree (so concurrent builds never share build/), without
build isolation (setuptools is already installed; nothing is downloaded). CI also installs it into
a fresh environment and runs the demo there (.ci/run, scripts/check_installed.py).
"""

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import minitx
from minitx.shipped import shipped_models, shipped_path

ROOT = Path(__file__).resolve().parent.parent
SKIP = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", "minitx-demo", "out")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip wheel .` builds from this checkout -> an open ZipFile."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    (path,) = (tmp / "dist").glob("minitx-*.whl")
    with zipfile.ZipFile(path) as z:
        yield z


def test_weights_folder_is_the_package_data():
    # minitx/weights is a relative symlink to the repository's weights/: one copy of the files.
    link = ROOT / "minitx" / "weights"
    assert link.is_symlink() and link.resolve() == (ROOT / "weights").resolve()
    assert {"english-6l", "induction-2l"} <= set(shipped_models())


def test_wheel_carries_every_file_of_every_shipped_model(wheel):
    names = set(wheel.namelist())
    models = [d for d in sorted((ROOT / "weights").iterdir()) if (d / "config.json").is_file()]
    assert {d.name for d in models} >= {"english-6l", "induction-2l"}
    for model in models:
        for file in sorted(p for p in model.rglob("*") if p.is_file()):
            inside = f"minitx/weights/{file.relative_to(ROOT / 'weights').as_posix()}"
            assert inside in names, f"{inside} is not in the wheel"
            assert sha256(wheel.read(inside)) == sha256(file.read_bytes()), f"{inside} differs from {file}"
    for model in ("english-6l", "induction-2l"):
        assert {f"minitx/weights/{model}/config.json", f"minitx/weights/{model}/model.safetensors"} <= names


def test_wheel_carries_the_tokenizer_files(wheel):
    names = set(wheel.namelist())
    for file in sorted((ROOT / "minitx" / "data" / "gpt2").iterdir()):
        inside = f"minitx/data/gpt2/{file.name}"
        assert inside in names and sha256(wheel.read(inside)) == sha256(file.read_bytes())
    assert {"minitx/data/gpt2/encoder.json", "minitx/data/gpt2/vocab.bpe"} <= names


def test_wheel_holds_only_the_package(wheel):
    names = wheel.namelist()
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "weights/", "docs/"))]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    top = {n.split("/")[0] for n in names}
    assert top == {"minitx", f"minitx-{minitx.__version__}.dist-info"}
    assert {"minitx/__main__.py", "minitx/shipped.py", "minitx/viewer.py", "minitx/page.py", "minitx/viewer.js"} <= set(names)
    entry_points = wheel.read(f"minitx-{minitx.__version__}.dist-info/entry_points.txt").decode()
    assert "minitx = minitx.cli:main" in entry_points
    metadata = wheel.read(f"minitx-{minitx.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {minitx.__version__}\n" in metadata


def test_short_names_load_the_shipped_models_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no weights/ here
    for name in ("english-6l", "induction-2l"):
        assert shipped_path(name) == shipped_path(f"weights/{name}") == ROOT / "minitx" / "weights" / name
        by_short_name, by_path = minitx.load(name), minitx.load(ROOT / "weights" / name)
        for (key, a), (_, b) in zip(by_short_name.state_dict().items(), by_path.state_dict().items()):
            assert torch.equal(a, b), key
    assert shipped_path("gpt2") is None and shipped_path("english-7l") is None and shipped_path(None) is None


def test_a_local_folder_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "weights" / "induction-2l", tmp_path / "english-6l")
    assert shipped_path("english-6l") is None
    assert minitx.load("english-6l").cfg.n_layer == 2  # the local copy (of the 2-layer fixture), as given


def test_python_dash_m_and_version(tmp_path):
    for argv in ([sys.executable, "-m", "minitx", "--version"], [sys.executable, "-m", "minitx.cli", "--version"]):
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == f"minitx {minitx.__version__}", done
    done = subprocess.run([sys.executable, "-m", "minitx", "lens"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "minitx lens: error: the following arguments are required: prompt" in done.stderr
