"""Tables, labels and number formatting shared by the command line, the demo and any other renderer.

Nothing here computes an analysis: these functions turn numbers the library returned into text.

    fmt(v)                    one cell: floats to 3 decimals, no "-0.000", "nan" for NaN
    pct(x)                    a share as a whole percentage, "41%"
    fmt_interval(v, lo, hi)   an estimate and its interval, "0.412 [0.350, 0.470]"
    token_label(t, limit)     a token as a label: newlines visible, blank tokens quoted, long ones cut
    head_label(l, h)          "L.H", the name of a head everywhere in minitx
    text_table(header, rows)  aligned plain text (the CLI)
    md_table(header, rows)    a Markdown table (the demo's report.md)
    head_rows(scores)         {name: [layer, head]} -> one row per head: ["L.H", score, score, ...]
    progress(items, label)    yields items, drawing a bar with an ETA on a terminal, nothing otherwise
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator


def fmt(v, digits: int = 3) -> str:
    """A table cell: a float to `digits` decimals (never "-0.000"; "nan" for NaN), anything else as str."""
    if not isinstance(v, float):
        return str(v)
    text = "nan" if v != v else f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def pct(x) -> str:
    """A share (1.0 = all) as a whole percentage: 0.414 -> "41%"."""
    return f"{100 * float(x):.0f}%"


def fmt_interval(estimate, low, high, digits: int = 3) -> str:
    """An estimate and its interval as one cell: "0.412 [0.350, 0.470]" (each as fmt prints it)."""
    return f"{fmt(float(estimate), digits)} [{fmt(float(low), digits)}, {fmt(float(high), digits)}]"


def token_label(token, limit: int = 12) -> str:
    """A token as a label: newlines and tabs visible, whitespace-only tokens quoted, long ones shortened."""
    token = str(token)
    if not token.strip(" "):  # "" or spaces only would be an invisible label
        token = repr(token)
    text = token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def head_label(layer: int, head: int) -> str:
    return f"{layer}.{head}"


def text_table(header: list[str], rows: list[list]) -> str:
    """Rows of cells -> aligned text; the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in header]] + [[fmt(v) for v in row] for row in rows]
    _check_row_lengths(cells)
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def md_table(header: list[str], rows: list[list]) -> str:
    """Rows of cells -> a Markdown table; floats to 3 decimals."""
    _check_row_lengths([header, *rows])
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _check_row_lengths(rows: list) -> None:
    """ValueError naming the first row whose cell count differs from the header's (a table would misalign)."""
    for i, row in enumerate(rows[1:]):
        if len(row) != len(rows[0]):
            raise ValueError(f"table row {i} has {len(row)} cells but the header has {len(rows[0])}")


def head_rows(scores: dict) -> list[list]:
    """{name: [layer, head] tensor} -> one row per head, ["L.H", float per name], layer-major."""
    first = next(iter(scores.values()))
    return [[head_label(l, h), *(float(s[l, h]) for s in scores.values())]
            for l in range(first.shape[0]) for h in range(first.shape[1])]


def progress(items: Iterable, label: str, total: int | None = None, stream=None) -> Iterator:
    """Yields items; on a terminal, draws `label [#####.....] 3/8 ETA 12s` on one stderr line as they go.

    When the stream is not a terminal (a pipe, a file, a test) nothing is written, so logs stay clean."""
    stream = sys.stderr if stream is None else stream
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = len(items) if total is None else total
    if not getattr(stream, "isatty", lambda: False)() or total == 0:
        yield from items
        return
    start = time.monotonic()
    for done, item in enumerate(items):
        _draw(stream, label, done, total, start)
        yield item
    _draw(stream, label, total, total, start)
    stream.write("\n")
    stream.flush()


def _draw(stream, label: str, done: int, total: int, start: float) -> None:
    width = 24
    filled = int(width * done / total)
    elapsed = time.monotonic() - start
    eta = f"ETA {elapsed / done * (total - done):.0f}s" if 0 < done < total else (
        f"{elapsed:.0f}s" if done == total else "")
    stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {eta}   ")
    stream.flush()


__all__ = ["fmt", "fmt_interval", "pct", "token_label", "head_label", "text_table", "md_table", "head_rows", "progress"]
