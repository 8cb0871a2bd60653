"""The fields every analysis result shares, and a readable summary in place of a tensor dump.

Every result type in minitx (patching, path patching, attribution, DLA, lenses, head scores, circuits)
is a dataclass that inherits `Result`, so the same question has the same name everywhere:

    scores      the headline numbers, axes named by `axes` (normalised where the method normalises)
    axes        the names of `scores`' axes, e.g. ("layer", "head") or ("layer", "pos")
    raw         the unnormalised metric values behind `scores` (same axes), or None
    per_prompt  the values for each prompt, [*axes, prompt], or None when the method has none
    clean       the metric on the clean run (a float, batch mean), or None
    corrupted   the metric on the corrupted run (a float, batch mean), or None
    metric      the metric's name, e.g. "logit_diff(' mat' - ' dog')"

Method-specific extras (a point name, a direction, an interval) are further fields of the subclass.
Fields are keyword-only so a subclass may add required fields after these defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import Tensor


@dataclass(kw_only=True, repr=False)
class Result:
    """Base of every analysis result; see the module docstring for what each field means."""

    scores: Tensor
    axes: tuple = ()
    raw: Tensor | None = None
    per_prompt: Tensor | None = None
    clean: float | None = None
    corrupted: float | None = None
    metric: str = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(_field_summary(self, f.name) for f in fields(self)) + ")"

    def _repr_html_(self) -> str:
        """Jupyter / VS Code show a result inline as an offline heatmap (minitx/page.py, imported only here)."""
        from minitx.page import result_html
        return result_html(self)


def _field_summary(result, name: str) -> str:
    """name=value, with a tensor shown as its named shape and range rather than its entries."""
    value = getattr(result, name)
    if isinstance(value, dict) and any(isinstance(v, Tensor) for v in value.values()):  # e.g. point -> scores
        return f"{name}={{" + ", ".join(_value_summary(k, v) for k, v in value.items()) + "}"
    return _value_summary(name, value)


def _value_summary(name, value) -> str:
    if isinstance(value, Tensor):
        if value.numel() == 0:
            return f"{name}=<empty {tuple(value.shape)}>"
        shape = "x".join(map(str, value.shape)) or "scalar"
        if value.is_floating_point():
            finite = value[value.isfinite()]
            span = f"{float(finite.min()):.3g}..{float(finite.max()):.3g}" if finite.numel() else "no finite values"
            return f"{name}=<{shape} {span}>"
        return f"{name}=<{shape} {value.dtype}>"
    if isinstance(value, float):
        return f"{name}={value:.4g}"
    return f"{name}={value!r}"
