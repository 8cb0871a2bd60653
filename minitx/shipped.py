"""The models shipped with minitx, found by short name wherever minitx is installed.

    shipped_path("english-6l")          # -> the folder holding its config.json and model.safetensors
    shipped_path("weights/english-6l")  # the repository-relative spelling works from any directory too
    shipped_models()                    # -> ["english-6l", "induction-2l", ...]

The repository's top-level `weights/` folder is the one copy of the files; `minitx/weights` is a
symbolic link to it, so the build copies them into the wheel and sdist as package data and
`importlib.resources` finds them the same way in a source checkout, an editable install and a plain
(non-editable) install. Every file in a model's folder ships (config, weights, model card, lenses).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["shipped_models", "shipped_path"]

# How a shipped model may be named: its folder name, or the folder under the repository's weights/.
_PREFIX = "weights/"


def _root() -> Path:
    # A wheel installs as plain files, so the traversable is a real directory on disk.
    return Path(str(resources.files("minitx") / "weights"))


def shipped_models() -> list[str]:
    """The short names of the shipped models (folders with a config.json), sorted."""
    root = _root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def shipped_path(name) -> Path | None:
    """A shipped model's short name ("english-6l") or repository path ("weights/english-6l") -> its
    packaged folder; None for anything else, and for a name that exists as a local path (a local file
    or folder always wins, so a user's own ./english-6l is read as given)."""
    if not isinstance(name, str) or Path(name).exists():
        return None
    short = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    short = short.rstrip("/")
    if short not in shipped_models():
        return None
    return _root() / short
