"""The viewer's page and an offline headless Chromium to open it, shared by tests/test_view.py (which checks
the page) and scripts/view_screenshots.py (which photographs the same page for the README).

    page, results, clean, corrupted = story_page(minitx.load("english-6l"))
    driver = offline_chromium(profile_dir, window=(1400, 1000))     # selenium; networking off

Needs Debian's chromium + chromium-driver and selenium (the test extra); CHROMIUM / CHROMEDRIVER are None
when a binary is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import minitx
from minitx import discovery, metrics, patching

PROMPTS = ["The cat sat on the mat because it was tired", "The cat chased the mouse. The one who chased was the"]
CLEAN, CORRUPTED = PROMPTS[1], "The mouse chased the cat. The one who chased was the"

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# headless, and nothing that reaches the network on its own (updates, sync, QUIC probes)
FLAGS = ("--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
         "--disable-component-update --disable-sync").split()


def story_page(model):
    """(page, results, clean, corrupted): the viewer on PROMPTS, with resid_pre-by-position and z-by-head patching
    of the role-swapped story (" cat" vs " mouse") and its EAP edge scores."""
    clean, corrupted = (minitx.to_tokens(p, prepend_bos=True) for p in (CLEAN, CORRUPTED))
    metric = metrics.logit_diff_metric(minitx.to_single_token(" cat"), minitx.to_single_token(" mouse"))
    results = [patching.activation_patching(model, clean, corrupted, metric, "resid_pre", by="pos"),
               patching.activation_patching(model, clean, corrupted, metric, "z", by="all"),
               discovery.eap(model, clean, corrupted, metric)]
    page = minitx.view(model, PROMPTS, prepend_bos=True, model_name="english-6l", results=results,
                       pair=(clean, corrupted))
    return page, results, clean, corrupted


def offline_chromium(profile: Path, window: tuple[int, int] = (1400, 1000), extra_flags=(), log: bool = False):
    """A selenium driver of headless Chromium with its own profile folder and the network emulated offline, so a
    page that reached for anything outside itself would fail. log: keep the browser and performance logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--window-size={window[0]},{window[1]}", *extra_flags, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    if log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    return driver
