"""The README tour and the english-6l model card's snippet run as written, and say what they compute.

The README's ```python blocks are run in order in one namespace from the repository root, as a
reader would paste them. A block right after the line `<!-- test_readme: needs GPT-2 weights -->`
runs on its own, and only when GPT-2's weights are in the Hugging Face cache (never downloaded here).
The numbers the tour's comments quote are checked against what the code returns.
"""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CARD = ROOT / "weights" / "english-6l" / "MODEL_CARD.md"
NEEDS_GPT2 = "<!-- test_readme: needs GPT-2 weights -->"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def python_blocks(path: Path) -> list[tuple[str, bool]]:
    """[(code, needs_gpt2)] for every ```python block of a markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((match.group(1), before.strip() == NEEDS_GPT2))
    return blocks


def run(code: str, namespace: dict, where: str) -> None:
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 (the README's own code)


def test_the_block_parser():
    blocks = python_blocks(README)
    assert len(blocks) >= 3, "the README tour lost its code blocks"
    assert [needs for _, needs in blocks].count(True) >= 1, "the GPT-2 variant of the tour is missing"
    assert any("english-6l" in code for code, needs in blocks if not needs)


def test_readme_tour_runs_on_the_shipped_model(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the tour runs from any directory; files it writes (view.html) land here
    torch.manual_seed(0)
    namespace = {"__name__": "readme_tour"}
    for i, (code, needs_gpt2) in enumerate(python_blocks(README)):
        if not needs_gpt2:
            run(code, namespace, f"README.md python block {i + 1}")
    # What the comments say.
    minitx = namespace["minitx"]
    assert minitx.to_string([namespace["logits"][0, -1].argmax().item()]) == " mat"
    assert tuple(namespace["model"].W_Q.shape) == (6, 4, 128, 32)
    noised, direct, lens = namespace["noised"], namespace["direct"], namespace["lens"]
    assert abs(noised.clean - 20.8) < 0.05 and abs(noised.corrupted - -9.9) < 0.05
    assert abs(float(noised.scores[4, 2]) - 0.59) < 0.005
    assert abs(float(direct.scores) - 0.65) < 0.005
    probs = lens.target_probs[:, 0, -1]
    assert [round(float(p), 2) for p in probs[-3:]] == [0.15, 0.82, 1.00]
    interval = namespace["interval"]
    assert namespace["batch"].clean.shape == (50, 13)
    assert (round(float(interval.low[4, 2]), 2), round(float(interval.high[4, 2]), 2)) == (0.72, 0.77)
    if "page" in namespace:  # the viewer section
        assert (tmp_path / "view.html").stat().st_size > 0


def gpt2_cached() -> bool:
    try:
        from minitx.hub import cached_snapshot
    except ImportError:  # before the loading split
        from minitx.loading import cached_snapshot
    return cached_snapshot("gpt2") is not None


def test_readme_gpt2_tour_runs_when_the_weights_are_cached(monkeypatch):
    blocks = [code for code, needs_gpt2 in python_blocks(README) if needs_gpt2]
    if not gpt2_cached():
        pytest.skip("GPT-2's weights are not in the Hugging Face cache (minitx download gpt2)")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for i, code in enumerate(blocks):
        namespace = {"__name__": "readme_gpt2_tour"}
        run(code, namespace, f"README.md GPT-2 block {i + 1}")
        assert tuple(namespace["model"].W_Q.shape) == (12, 12, 768, 64)


def test_readme_gpt2_tour_code_runs_on_a_gpt2_shaped_random_model(monkeypatch):
    """Without the weights, the GPT-2 blocks still run against the API: minitx.load returns a random
    model with GPT-2 small's layers, heads and vocabulary (a narrow d_model keeps it fast)."""
    import minitx
    from tests.conftest import random_model

    fake = random_model(n_layer=12, n_head=12, n_embd=96, n_positions=64, vocab_size=50257)
    monkeypatch.setattr(minitx, "load", lambda name, **kwargs: fake, raising=False)
    for i, code in enumerate(code for code, needs_gpt2 in python_blocks(README) if needs_gpt2):
        namespace = {"__name__": "readme_gpt2_tour"}
        run(code, namespace, f"README.md GPT-2 block {i + 1}")  # its `import minitx` sees the patched load
        assert namespace["model"] is fake


def test_model_card_snippet_runs_and_prints_what_the_card_says(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    (code, _), = python_blocks(CARD)
    run(code, {"__name__": "model_card"}, "english-6l MODEL_CARD.md")
    printed = capsys.readouterr().out
    loss = float(re.search(r"tensor\(([\d.]+)\)", printed).group(1))
    assert abs(loss - 1.096) < 0.0005


def test_readme_circuit_example_runs_and_prints_what_it_says(monkeypatch, tmp_path, capsys):
    """The `minitx circuit` example: its python block writes pairs.jsonl, the command line after it runs as written
    (from the same folder) and prints the chosen circuit, F and its interval that the README quotes."""
    import shlex

    from minitx import cli
    monkeypatch.chdir(tmp_path)
    code, = [code for code, _ in python_blocks(README) if '"pairs.jsonl"' in code]
    run(code, {"__name__": "readme_circuit"}, "README.md circuit block")
    text = README.read_text(encoding="utf-8")
    command, = re.findall(r"^    (minitx circuit --pairs pairs\.jsonl.*)$", text, flags=re.M)
    assert cli.main(shlex.split(command)[1:]) == 0
    out = capsys.readouterr().out
    quoted = re.search(r"with\s+F = ([\d.]+) \[([\d.]+), ([\d.]+)\] \(complement ([-\d.]+) \[([-\d.]+), ([-\d.]+)\]\)",
                       text).groups()
    assert "interval over the 16 prompt pairs" in out
    chosen = next(line for line in out.splitlines() if line.startswith("smallest of the sizes tried"))
    assert f"top 10, 10 edges, F = {quoted[0]} [{quoted[1]}, {quoted[2]}]" in chosen, chosen
    row = next(line.split() for line in out.splitlines() if line.startswith("10 "))
    assert row[-3:] == [quoted[3], f"[{quoted[4]},", f"{quoted[5]}]"], row
    edges = ["input -> mlp0", "mlp0 -> 4.2.v", "mlp0 -> 5.0.v", "mlp0 -> 5.1.v", "4.2 -> mlp5", "5.1 -> mlp5",
             "4.2 -> logits", "5.0 -> logits", "5.1 -> logits", "mlp5 -> logits"]
    assert chosen.rsplit("]: ", 1)[1].split(", ") == edges  # the edges the README names
    assert (tmp_path / "circuit.png").stat().st_size > 0
