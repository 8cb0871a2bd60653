"""The offline HTML viewer (minitx/viewer.py, page.py, viewer.js): the file is self-contained, its embedded data equals
the library's numbers to the stated quantisation, and in a real headless Chromium, with networking off,
hovering a token, a heatmap cell, a lens cell and a patching cell shows the library's values.

The browser tests need Debian's chromium + chromium-driver and selenium (the test extra); they skip
cleanly when any is absent (.ci/run installs them). Screenshots of each view go to $MINITX_ARTIFACTS
(default: the test's tmp folder) and are checked for non-blank content.
"""

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

import minitx
from minitx import heads, metrics, page as pages, patching
from minitx.lens import logit_lens
from minitx.prompts import Vocab
from tests.browser import CHROMEDRIVER, CHROMIUM, CLEAN, CORRUPTED, PROMPTS, offline_chromium, story_page
SHOWN = 1e-3  # shown with 3 decimals (half a unit: 5e-4) from values stored to 4 (5e-5) or quantised (7.7e-6)


@pytest.fixture(scope="module")
def model():
    return minitx.load("english-6l")


@pytest.fixture(scope="module")
def case(model):
    """(page, results, clean, corrupted): two prompts; resid_pre-by-position and z-by-head patching, EAP edge scores."""
    return story_page(model)


def embedded(html: str) -> dict:
    """The JSON the page carries, read back from the file's text."""
    text = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', html, re.S).group(1)
    return json.loads(text.replace("<\\/", "</"))


def test_page_is_self_contained(case):
    html = case[0].html
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    assert not re.search(r"<link\b", html, re.I) and "@import" not in html and "url(" not in html
    assert not re.search(r"\b(fetch|XMLHttpRequest|WebSocket|importScripts)\s*\(", html)
    assert html.count("<script") == 2  # the data and the viewer's own code, inlined


def test_embedded_patterns_equal_the_models_to_the_quantisation(model, case):
    data = embedded(case[0].html)
    assert data == json.loads(json.dumps(case[0].data))
    assert data["n_layer"] == model.cfg.n_layer and data["n_head"] == model.cfg.n_head and data["bos"] is True
    for prompt, entry in zip(PROMPTS, data["prompts"]):
        tokens = minitx.to_tokens(prompt, prepend_bos=True)
        assert entry["ids"] == tokens[0].tolist() and entry["tokens"] == minitx.to_str_tokens(tokens[0])
        expected = heads.attention_patterns(model, tokens)[:, 0].double()  # [layer, head, q, k]
        decoded = pages.decode_patterns(entry["attn"], model.cfg.n_layer, model.cfg.n_head, tokens.shape[1])
        # half a quantisation step, plus float noise (the page was computed under another thread count)
        assert (decoded - expected).abs().max() <= 0.5 / pages.QUANT + 2e-6


def test_embedded_lens_and_patching_equal_the_librarys(model, case):
    page, results, clean, corrupted = case
    data = embedded(page.html)
    for prompt, entry in zip(PROMPTS, data["prompts"]):
        lens = logit_lens(model, minitx.to_tokens(prompt, prepend_bos=True), top_k=5)
        assert entry["lens"]["labels"] == lens.labels
        assert entry["lens"]["ids"] == lens.top_tokens[:, 0].tolist()
        torch.testing.assert_close(torch.tensor(entry["lens"]["probs"]), lens.top_probs[:, 0], atol=5e-5, rtol=0)
        assert all(data["words"][str(i)] == minitx.to_string([i]) for i in lens.top_tokens.unique().tolist())
    for result, shown in zip(results[:2], data["results"]):
        assert shown["metric"] == result.metric and shown["clean"] == result.clean
        values = torch.tensor(shown["values"][0], dtype=torch.float64).reshape(result.scores.shape)
        torch.testing.assert_close(values, result.scores.double(), atol=5e-5, rtol=0)
        assert shown["pair"]["clean"] == minitx.to_str_tokens(clean[0])
        assert shown["pair"]["corrupted"] == minitx.to_str_tokens(corrupted[0])


def test_embedded_edges_are_the_largest_scores(case):
    scores = case[1][2]  # EdgeScores
    shown = embedded(case[0].html)["results"][2]
    assert shown["view"] == "circuit" and shown["n_edges"] == scores.graph.n_edges == len(scores.scores)
    order = scores.scores.abs().argsort(descending=True)[:len(shown["edges"])]
    assert len(shown["edges"]) == min(pages.MAX_EDGES, len(scores.scores))
    for (writer, reader, value), e in zip(shown["edges"], order.tolist()):
        assert f"{writer} -> {reader}" == scores.graph.label(e) and abs(value - float(scores.scores[e])) <= 5e-5


def test_a_tuned_lens_table(model):
    from minitx.lens import read_lens
    from minitx.tuned_lens import TunedLens
    lens = TunedLens(model)
    with torch.no_grad():  # a lens that differs from the logit lens: some translator biases set
        for layer, translator in enumerate(lens.translators):
            translator.bias.copy_(torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(layer)))
    tokens = minitx.to_tokens(PROMPTS[0], prepend_bos=True)
    shown = minitx.view(model, PROMPTS[0], prepend_bos=True, lens=lens).data["prompts"][0]["lens"]
    expected = read_lens(lens, tokens, top_k=5)
    assert shown["kind"] == "tuned" and shown["ids"] == expected.top_tokens[:, 0].tolist()
    torch.testing.assert_close(torch.tensor(shown["probs"]), expected.top_probs[:, 0], atol=5e-5, rtol=0)
    assert "lens" not in minitx.view(model, PROMPTS[0], prepend_bos=True, lens=False).data["prompts"][0]


def test_repr_html_of_results_and_pages(model, case):
    page, results, _, _ = case
    lens = logit_lens(model, minitx.to_tokens(PROMPTS[0], prepend_bos=True))
    for fragment in (page._repr_html_(), results[0]._repr_html_(), lens._repr_html_()):
        assert fragment.startswith('<div class="mtx" id="mtx') and "minitxView(" in fragment
        assert "http://" not in fragment and "https://" not in fragment
    data = embedded(results[1]._repr_html_())
    torch.testing.assert_close(torch.tensor(data["results"][0]["values"][0], dtype=torch.float64).reshape(results[1].scores.shape),
                               results[1].scores.double(), atol=5e-5, rtol=0)
    assert embedded(lens._repr_html_())["prompts"][0]["lens"]["ids"] == lens.top_tokens[:, 0].tolist()


def test_token_ids_model_and_three_axis_results(tmp_path):
    # A model without text (ids as labels), and a [layer, pos, head] result shown as one heatmap per head.
    model = minitx.load("induction-2l")
    tokens = torch.tensor([[64, 5, 9, 2, 5, 9]])
    result = patching.activation_patching(model, tokens, torch.tensor([[64, 7, 9, 2, 5, 9]]),
                                          metrics.log_prob_metric(2, pos=-1), "z", by="pos")
    page = minitx.view(model, tokens, prepend_bos=True, vocab=Vocab(model.cfg), results=[result])
    data = page.data
    assert data["prompts"][0]["tokens"] == ["BOS", "5", "9", "2", "5", "9"]
    assert len(data["results"][0]["values"]) == model.cfg.n_head and data["results"][0]["slice_axis"] == "head"
    assert page.save(tmp_path / "v.html").read_text(encoding="utf-8") == page.html


def test_any_result_shape_renders():
    from minitx.results import Result
    for scores, axes in ((torch.tensor(0.25), ()), (torch.arange(3.0), ("layer",)),
                         (torch.rand(2, 3, 4, 5), ("layer", "pos", "head", "prompt"))):
        html = Result(scores=scores, axes=axes, metric="m")._repr_html_()
        shown = embedded(html)["results"][0]
        flat = torch.tensor([v for s in shown["values"] for v in s], dtype=torch.float64)
        assert len(flat) == scores.numel() and set(flat.tolist()) == set(scores.double().round(decimals=4).reshape(-1).tolist())


def test_command_line_writes_the_page(tmp_path, monkeypatch, capsys):
    from minitx import cli
    monkeypatch.chdir(tmp_path)
    code = cli.main(["view", "--prompt", "The cat sat on the", "--clean", CLEAN, "--corrupted", CORRUPTED,
                     "--answer", " cat", "--wrong", " mouse", "--out", "v.html"])
    assert code == 0 and "v.html" in capsys.readouterr().out
    data = embedded((tmp_path / "v.html").read_text(encoding="utf-8"))
    assert [len(data["prompts"]), len(data["results"])] == [1, 3] and data["model"] == "weights/english-6l"
    assert data["results"][2]["view"] == "circuit" and data["results"][2]["method"] == "EAP"
    assert cli.main(["view", "--clean", CLEAN]) == 2
    assert "needs all of --clean, --corrupted" in capsys.readouterr().err


# -- in a real browser -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (.ci/run installs Debian's)")
    pytest.importorskip("selenium.webdriver")
    profile = tempfile.mkdtemp(prefix="minitx-chromium-")
    driver = offline_chromium(profile, window=(1400, 1000), log=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def opened(browser, case, tmp_path_factory):
    path = tmp_path_factory.mktemp("view") / "view.html"
    case[0].save(path)
    browser.get_log("performance")  # drop what came before
    browser.get(path.as_uri())
    return browser


def hover(driver, element, x=None, y=None):
    """Moves the mouse over element (its centre, or the point x, y from its top-left corner)."""
    from selenium.webdriver.common.action_chains import ActionChains
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    actions = ActionChains(driver)
    if x is None:
        actions.move_to_element(element)
    else:
        size = element.size
        actions.move_to_element_with_offset(element, int(x - size["width"] / 2), int(y - size["height"] / 2))
    actions.perform()


def tip(driver) -> str:
    return driver.find_element("css selector", ".mtx .tip").get_attribute("textContent")


def test_browser_token_hover_shows_every_heads_attention(opened, model):
    tokens = minitx.to_tokens(PROMPTS[0], prepend_bos=True)
    expected = heads.attention_patterns(model, tokens)[:, 0]  # [layer, head, q, k]
    i = 4  # " on"
    hover(opened, opened.find_elements("css selector", "[data-view=attention] .tok")[i])
    cells = opened.find_elements("css selector", "[data-part=heads] td[data-dir]")
    assert len(cells) == model.cfg.n_head * (tokens.shape[1] + 1)  # from: keys 0..i; to: queries i..T-1
    for cell in cells:
        h, k, direction = int(cell.get_attribute("data-head")), int(cell.get_attribute("data-pos")), cell.get_attribute("data-dir")
        value = expected[0, h, i, k] if direction == "from" else expected[0, h, k, i]
        assert abs(float(cell.get_attribute("textContent")) - float(value)) <= SHOWN, (h, k, direction)


def test_browser_heatmap_hover_shows_the_pattern_value(opened, model):
    tokens = minitx.to_tokens(PROMPTS[0], prepend_bos=True)
    expected = heads.attention_patterns(model, tokens)[:, 0]
    T = tokens.shape[1]
    for selector, (layer, head) in (("[data-part=pattern]", (0, 0)), ("canvas[data-layer='5'][data-head='1']", (5, 1))):
        canvas = opened.find_element("css selector", f"[data-view=attention] {selector}")
        for q, k in ((7, 2), (T - 1, 0), (3, 3)):
            cell = canvas.size["width"] / T
            hover(opened, canvas, (k + 0.5) * cell, (q + 0.5) * cell)
            text = tip(opened)
            assert f"head {layer}.{head}  query {q} " in text and f"-> key {k} " in text, text
            shown = float(re.search(r"attention ([0-9.]+)", text).group(1))
            assert abs(shown - float(expected[layer, head, q, k])) <= SHOWN


def test_browser_lens_and_patching_hover(opened, model, case):
    tokens = minitx.to_tokens(PROMPTS[0], prepend_bos=True)
    lens = logit_lens(model, tokens, top_k=5)
    row, col = 4, 5  # 4_pre at " the"
    hover(opened, opened.find_element("css selector", f"[data-part=lens] td[data-row='{row}'][data-col='{col}']"))
    lines = tip(opened).split("\n")
    assert lines[0].startswith(f"{lens.labels[row]}, position {col} ")
    for line, token_id, p in zip(lines[1:], lens.top_tokens[row, 0, col].tolist(), lens.top_probs[row, 0, col].tolist()):
        word, shown = line.rsplit(" ", 1)
        assert json.loads(word) == minitx.to_string([token_id]) and abs(float(shown) - p) <= SHOWN
    result = case[1][0]  # resid_pre by position, [layer, pos]
    layer, pos = 2, 2
    table = opened.find_elements("css selector", "[data-view=result] table[data-part=result]")[0]
    hover(opened, table.find_element("css selector", f"td[data-row='{layer}'][data-col='{pos}']"))
    text = tip(opened)
    assert abs(float(re.search(r"score (-?[0-9.]+)", text).group(1)) - float(result.scores[layer, pos])) <= SHOWN
    assert f"metric: {result.metric}" in text
    assert json.dumps("<|endoftext|>" + CLEAN) in text and json.dumps("<|endoftext|>" + CORRUPTED) in text


def test_browser_circuit_edge_hover(opened, case):
    scores = case[1][2]
    for rank in (0, 3):
        e = int(scores.scores.abs().argsort(descending=True)[rank])
        line = opened.find_element("css selector", f"[data-view=circuit] line[data-edge='{rank}']")
        assert line.get_attribute("data-label") == scores.graph.label(e)
        hover(opened, line)
        text = tip(opened)
        assert text.startswith(scores.graph.label(e) + "\n") and "method: EAP" in text, text
        assert abs(float(re.search(r"score (-?[0-9.]+)", text).group(1)) - float(scores.scores[e])) <= SHOWN


def test_browser_no_console_error_no_network_and_screenshots(opened, tmp_path):
    errors = [e for e in opened.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    requests = [json.loads(e["message"])["message"] for e in opened.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    assert urls and all(u.startswith("file://") for u in urls), urls
    out = Path(os.environ.get("MINITX_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    sections = opened.find_elements("css selector", ".mtx section[data-view]")
    assert [s.get_attribute("data-view") for s in sections] == ["attention", "lens", "result", "result", "circuit"]
    for name, section in zip(["attention", "lens", "patching-resid", "patching-heads", "circuit"], sections):
        opened.execute_script("arguments[0].scrollIntoView()", section)
        path = out / f"view-{name}.png"
        assert section.screenshot(str(path))
        image = matplotlib.image.imread(path)[..., :3]
        colours = np.unique((image.reshape(-1, 3) * 255).round().astype(int), axis=0)
        assert image.std() > 0.05 and len(colours) > 20, (name, image.std(), len(colours))  # not blank


def test_demo_view_of_the_fixture():
    from minitx.viewer import demo_view
    model = minitx.load("induction-2l")
    data = demo_view(model, prepend_bos=True).data
    ids = data["prompts"][0]["ids"]
    assert ids[0] == 64 and len(ids) == 21 and ids[1:11] == ids[11:]  # [BOS] + r + r, n = 10
    assert data["results"] == [] and data["bos"] is True


def test_demo_html_on_the_fixture(tmp_path, monkeypatch, capsys):
    from minitx import cli
    monkeypatch.chdir(tmp_path)
    code = cli.main(["demo", "--model", "induction-2l", "--out", "d", "--html", "demo.html"])
    assert code == 0 and "view: " in capsys.readouterr().out and (tmp_path / "d" / "report.md").is_file()
    data = embedded((tmp_path / "demo.html").read_text(encoding="utf-8"))
    assert data["model"] == "induction-2l" and data["prompts"][0]["ids"][1:11] == data["prompts"][0]["ids"][11:]
    assert cli.main(["demo", "--model", "induction-2l", "--out", "e", "--html", "no/such/folder/x.html"]) == 2
    assert "--html no/such/folder/x.html: the folder" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_screenshot_script_photographs_the_tested_page(browser, tmp_path):
    """scripts/view_screenshots.py opens tests/browser.py's page in the same offline Chromium: five non-blank PNGs."""
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "view_screenshots.py"))["main"](
        ["--out", str(tmp_path)])
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [f"view-{v}.png" for v in ("attention", "circuit", "grid", "lens", "patching")]
    for name in names:
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[:2] == (757, 1200) and float(image.std()) > 0.05, name  # the page, not a blank window
