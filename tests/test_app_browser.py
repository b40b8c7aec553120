"""The showcase in a real browser: ``streamlit run app.py``, headless Chromium, type, click, read.

AppTest (tests/test_app.py) runs the script without a browser; this test checks what a visitor
gets: the server starts on a loopback port, the page loads every model, and typing a prompt
and clicking Generate shows exactly the text generation.py produces. Screenshots of the
overview, the generated text and the metrics go to runs/screenshots/ and /tmp/app_screenshots/.

Chromium is Debian's (/usr/bin/chromium) driven by Playwright's Python package; Playwright's
own browser download is never used.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT
from test_app import needs_data, tiny_project

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SCREENSHOT_DIRS = [ROOT / "runs" / "screenshots", Path("/tmp/app_screenshots")]
WAIT_MS = 60_000

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright package is not installed")
pytestmark = [
    pytest.mark.slow,
    needs_data,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"streamlit was not healthy after {timeout:.0f} s:\n{log.read_text()}")


def wait_for_count(locator, n: int, timeout: float = WAIT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while locator.count() < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{locator} found {locator.count()} times, expected {n}")
        time.sleep(0.25)


def screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main block, so the window is made as tall
    as that block's content first (at most 6000 pixels)."""
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden")  # rerun finished
    height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": min(max(height, 900), 6000)})
    time.sleep(0.5)  # charts re-layout to the new size
    for folder in SCREENSHOT_DIRS:
        folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOT_DIRS[0] / name)
    shutil.copy(SCREENSHOT_DIRS[0] / name, SCREENSHOT_DIRS[1] / name)
    page.set_viewport_size({"width": 1400, "height": 900})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``streamlit run app.py`` in the tiny project folder; its URL. Killed afterwards."""
    project = tiny_project(tmp_path_factory)
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, "LLM_APP_DEVICE": "cpu", "LLM_APP_DIR": str(project)}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.headless", "true", "--server.address", "127.0.0.1",
             "--server.port", str(port), "--browser.gatherUsageStats", "false"],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process, log)
        yield url, project
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def page(server):
    """A fresh headless Chromium tab showing the app, once every model is loaded."""
    url, _ = server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(url, timeout=WAIT_MS)
            page.get_by_text("4 of 4 models loaded").wait_for()
            yield page
        finally:
            browser.close()


def visible_tab(page):
    return page.locator("[data-testid='stTabPanel']:visible")


def test_a_visitor_types_a_prompt_and_sees_the_generated_text(server, page):
    from checkpoint import load_checkpoint
    from generation import generate_text

    _, project = server
    model, tokenizer, _ = load_checkpoint(project / "model_weights.pth")
    # The Generate tab's defaults: 120 tokens, temperature 0.8, top-k 50, seed 1337.
    expected = generate_text(model, tokenizer, "KING:", max_new_tokens=120, temperature=0.8,
                             top_k=50, seed=1337)
    assert expected

    page.get_by_role("tab", name="Generate").click()
    page.locator("textarea[aria-label='Prompt']").fill("KING:")
    page.get_by_role("button", name="Generate").click()
    visible_tab(page).get_by_text("tokens/s").wait_for()
    shown = page.locator("div[style*='pre-wrap']", has_text="KING:").text_content()
    assert shown == "KING:" + expected
    screenshot(page, "generate.png")


def test_every_tab_renders_in_the_browser(page):
    charts = page.locator("[data-testid='stVegaLiteChart']:visible svg")
    wait_for_count(charts, 2)
    screenshot(page, "overview.png")

    page.get_by_role("tab", name="Tokenizer").click()
    visible_tab(page).get_by_text("Characters per token").wait_for()
    screenshot(page, "tokenizer.png")

    page.get_by_role("tab", name="Sentiment").click()
    wait_for_count(charts, 2)  # one probability chart per classifier
    screenshot(page, "sentiment.png")

    page.get_by_role("tab", name="Instructions").click()
    page.locator("textarea[aria-label='Instruction']").fill("Name three primary colours.")
    page.get_by_role("button", name="Answer").click()
    visible_tab(page).get_by_text("tokens/s").wait_for()
    screenshot(page, "instructions.png")

    page.get_by_role("tab", name="Attention").click()
    wait_for_count(charts, 1)
    screenshot(page, "attention.png")

    page.get_by_role("tab", name="Metrics").click()
    # 4 training curves, 2 evaluation charts, accuracy, 3 costs, NF4 memory.
    wait_for_count(charts, 11)
    screenshot(page, "metrics.png")
    assert not page.locator("[data-testid='stException']").count()
