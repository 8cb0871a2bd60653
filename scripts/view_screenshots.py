"""Screenshots of the HTML viewer for the README (docs/view-*.png), taken in headless Chromium offline.

    python scripts/view_screenshots.py [--out docs]

Needs Debian's chromium + chromium-driver and selenium (the test extra). Builds the page that
tests/test_view.py checks (tests/browser.py: english-6l, two prompts, resid_pre-by-position and z-by-head
patching of the role-swapped story, EAP edge scores), opens it in the same offline headless Chromium,
hovers a token, a lens cell, a patching cell and an edge, and saves one PNG per view.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
import minitx  # noqa: E402
from tests.browser import offline_chromium, story_page  # noqa: E402


def shoot(driver, section, hover_target, path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    driver.execute_script("arguments[0].scrollIntoView()", section)
    ActionChains(driver).move_to_element(hover_target).perform()
    time.sleep(0.2)
    driver.save_screenshot(str(path))
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default: docs)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "view.html"
        story_page(minitx.load("english-6l"))[0].save(page)
        driver = offline_chromium(Path(tmp) / "profile", window=(1200, 900), extra_flags=["--hide-scrollbars"])
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
