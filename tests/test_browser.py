"""The explorer in a real browser: JupyterLab served headless, Chromium driven by Playwright opens a
copy of notebooks/explore.ipynb, runs it, moves the threshold and checks what is rendered.

Needs the `playwright` package and a Chromium (`.ci/run` installs Debian's); without them the test
skips and says which is missing.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_explorer import _fake_run

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "explore.ipynb"


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_explorer_in_jupyterlab_redraws_the_mask_when_the_threshold_moves(tiny_root: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    _fake_run(tmp_path / "runs", "a-run", tiny_root, fg=0.8, best=0.5)
    served = tmp_path / "notebooks"
    served.mkdir()
    shutil.copy(NOTEBOOK, served)  # JupyterLab autosaves what it runs: never the tracked notebook
    port, token = _free_port(), "wsss-browser-test"
    env = {**os.environ, "WSSS_RUNS": str(tmp_path / "runs")}  # the kernel inherits it
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=60_000)
            page.wait_for_timeout(3000)
            choose_kernel = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
            if choose_kernel.count():  # the tracked notebook names no kernel; JupyterLab may ask
                choose_kernel.click()
            page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=60_000)
            page.click("text=Run >> nth=0")
            page.click("[data-command='runmenu:run-all']")
            view = page.locator(".jupyter-widgets img").first
            view.wait_for(timeout=120_000)
            info = page.locator(".widget-html-content").first
            assert "at threshold 0.50" in info.inner_text()  # the run's chosen threshold
            before = view.get_attribute("src")

            page.locator(".widget-slider .noUi-handle").first.focus()
            page.keyboard.press("End")  # threshold 1.0: every pixel background
            # The picture and the caption are two widget updates that reach the page one after the other:
            # wait for both rather than reading one the moment the other lands.
            page.wait_for_function("b => document.querySelector('.jupyter-widgets img').src !== b", arg=before,
                                   timeout=30_000)
            page.wait_for_function(
                "() => document.querySelector('.widget-html-content').innerText.includes('at threshold 1.00')",
                timeout=30_000)  # raises if the caption never follows the slider

            page.locator("select").filter(has_text="worst image mIoU first").select_option(label="worst image mIoU first")
            page.wait_for_function("() => [...document.querySelectorAll('option')].some(o => o.text.includes('mIoU'))",
                                   timeout=30_000)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert not any("Error" in t for t in errors.all_inner_texts()), errors.all_inner_texts()
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"browser test: {time.perf_counter() - start:.1f} s")
