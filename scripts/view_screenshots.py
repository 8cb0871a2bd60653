"""Screenshots of the HTML viewer for the README (docs/view-*.png), taken in headless Chromium offline.

    python scripts/view_screenshots.py [--out docs]

Needs Debian's chromium + chromium-driver and selenium (the test extra). Builds the page that
tests/test_view.py checks (english-6l, two prompts, resid_pre-by-position and z-by-head patching of the
role-swapped story, EAP edge scores), hovers a token, a lens cell, a patching cell and an edge, and saves
one PNG per view.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import minitx
from minitx import discovery, metrics, patching

PROMPTS = ["The cat sat on the mat because it was tired", "The cat chased the mouse. The one who chased was the"]
CORRUPTED = "The mouse chased the cat. The one who chased was the"
FLAGS = ("--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
         "--disable-component-update --disable-sync --window-size=1200,900 --hide-scrollbars").split()


def build_page(path: Path) -> None:
    model = minitx.load("english-6l")
    clean, corrupted = (minitx.to_tokens(p, prepend_bos=True) for p in (PROMPTS[1], CORRUPTED))
    metric = metrics.logit_diff_metric(minitx.to_single_token(" cat"), minitx.to_single_token(" mouse"))
    results = [patching.activation_patching(model, clean, corrupted, metric, "resid_pre", by="pos"),
               patching.activation_patching(model, clean, corrupted, metric, "z", by="all"),
               discovery.eap(model, clean, corrupted, metric)]
    page = minitx.view(model, PROMPTS, prepend_bos=True, model_name="english-6l", results=results,
                       pair=(clean, corrupted))
    page.save(path)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='minitx-chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    return driver


def shoot(driver, section, hover_target, path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    driver.execute_script("arguments[0].scrollIntoView()", section)
    ActionChains(driver).move_to_element(hover_target).perform()
    time.sleep(0.2)
    driver.save_screenshot(str(path))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "view.html"
        build_page(page)
        driver = browser()
        try:
            driver.get(page.as_uri())
            find = lambda css: driver.find_element("css selector", css)  # noqa: E731
            from selenium.webdriver.support.ui import Select
            Select(find("select[data-control=layer]")).select_by_value("4")  # the previous-token head 4.1
            shoot(driver, find("[data-view=attention]"), driver.find_elements("css selector", ".tok")[3],
                  args.out / "view-attention.png")
            grid = find("[data-part=grid]")
            shoot(driver, grid, find("canvas[data-layer='4'][data-head='1']"), args.out / "view-grid.png")
            shoot(driver, find("[data-view=lens]"), find("[data-part=lens] td[data-row='5'][data-col='5']"),
                  args.out / "view-lens.png")
            results = driver.find_elements("css selector", "[data-view=result]")
            shoot(driver, results[0], results[0].find_element("css selector", "td[data-row='3'][data-col='2']"),
                  args.out / "view-patching.png")
            circuit = find("[data-view=circuit]")
            shoot(driver, circuit, circuit.find_element("css selector", "line[data-edge='0']"), args.out / "view-circuit.png")
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
