"""minitx.report: the text tables, labels and progress bar the command line and the demo share."""

import io

import pytest

from minitx import report


def test_fmt_and_pct():
    assert report.fmt(0.12345) == "0.123" and report.fmt(-0.0001) == "0.000" and report.fmt(float("nan")) == "nan"
    assert report.fmt(3) == "3" and report.fmt("a") == "a" and report.fmt(2.0, digits=1) == "2.0"
    assert report.pct(0.414) == "41%" and report.pct(-0.05) == "-5%"
    assert report.fmt_interval(0.4123, 0.35, 0.47) == "0.412 [0.350, 0.470]"
    assert report.fmt_interval(-0.0001, -0.0004, 0.2, digits=2) == "0.00 [0.00, 0.20]"  # no "-0.00"


def test_token_label():
    assert report.token_label(" cat") == " cat"
    assert report.token_label("a\nb") == "a\\nb" and report.token_label(" ") == "' '" and report.token_label("") == "''"
    assert report.token_label("abcdefghijklmnop", 6) == "abcde…"


def test_text_and_markdown_tables():
    text = report.text_table(["head", "score"], [["0.1", 0.5], ["10.2", -1.25]])
    assert text.splitlines() == ["head   score", "----  ------", "0.1    0.500", "10.2  -1.250"]
    md = report.md_table(["head", "score"], [["0.1", 0.5]])
    assert md.splitlines() == ["| head | score |", "|---|---|", "| 0.1 | 0.500 |"]
    import torch
    rows = report.head_rows({"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[3.0, 4.0]])})
    assert rows == [["0.0", 1.0, 3.0], ["0.1", 2.0, 4.0]]
    for table in (report.text_table, report.md_table):  # a short row would shift every later column
        with pytest.raises(ValueError, match="table row 1 has 1 cells but the header has 2"):
            table(["head", "score"], [["0.1", 0.5], ["0.2"]])


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_bar_on_a_terminal_only():
    quiet = io.StringIO()
    assert list(report.progress(range(3), "work", stream=quiet)) == [0, 1, 2] and quiet.getvalue() == ""
    tty = Terminal()
    assert list(report.progress(["a", "b"], "work", stream=tty)) == ["a", "b"]
    lines = tty.getvalue().split("\r")
    assert lines[1].startswith("work [") and "0/2" in lines[1]
    assert "2/2" in lines[-1] and tty.getvalue().endswith("\n")
    assert "ETA" in lines[2]  # after the first item an estimate of what is left
