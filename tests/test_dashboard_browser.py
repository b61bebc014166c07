"""The dashboard in a real browser: headless Chromium logs in to `apikeyrouter serve` in front of the
simulator, sees the keys, and sees a key go throttled live (the row changes without a reload).

Needs Debian's `chromium` and `chromium-driver` (`apt-get install -y chromium chromium-driver`); `.ci/run`
installs them. Without them the test skips on a dev machine, and fails when `APIKEYROUTER_CI=1`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.serve_env import ADMIN, serve_env

TIGHT = "sk-sim-dash-tight-0123456789"
STEADY = "sk-sim-dash-steady-0123456789"
KEYS = [("tight", "DASH_KEY_TIGHT", 'metadata = { quality = "premium" }'), ("steady", "DASH_KEY_STEADY", "")]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


def browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = "chromium and chromium-driver are not installed: apt-get install -y chromium chromium-driver"
    if os.environ.get("APIKEYROUTER_CI") == "1":
        pytest.fail(f"{missing} (.ci/run should have installed them)")
    pytest.skip(missing)


@asynccontextmanager
async def headless_chromium() -> AsyncIterator[webdriver.Chrome]:
    """Chromium under chromedriver. Selenium blocks: every call runs in a worker thread, off trio's loop."""
    chromium, driver = browser_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1200")
    browser = await trio.to_thread.run_sync(lambda: webdriver.Chrome(options=options, service=Service(driver)))
    try:
        yield browser
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(browser.quit)


def wait_until(browser: webdriver.Chrome, what: Callable[[Any], Any], seconds: float = 30.0) -> Any:
    # Generous: Chromium on a loaded 2-core machine can take seconds to render what it got at once. The live
    # dashboard re-renders its rows on every update: a row replaced between finding it and reading it is not
    # read yet (stale), and the next poll reads the new one.
    wait = WebDriverWait(browser, seconds, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(what, message=f"waited {seconds:g} s")


def lifecycle_of(key: str) -> Callable[[webdriver.Chrome], str | None]:
    def read(browser: webdriver.Chrome) -> str | None:
        cells = browser.find_elements(By.CSS_SELECTOR, f'#keys tr[data-key="{key}"] td.lifecycle .pill')
        return cells[0].text if cells else None

    return read


async def test_the_dashboard_shows_a_key_going_throttled_live(tmp_path: Path) -> None:
    browser_binaries()  # skip (or fail in CI) before starting anything
    async with (
        serve_env(
            tmp_path,
            KEYS,
            secrets={"DASH_KEY_TIGHT": TIGHT, "DASH_KEY_STEADY": STEADY},
            sim_keys=[{"key": TIGHT, "rpm": 1}],
        ) as served,
        headless_chromium() as browser,
    ):

        def log_in() -> None:
            browser.get(served.url + "/dashboard")
            browser.find_element(By.ID, "token").send_keys(ADMIN)
            browser.find_element(By.ID, "login-button").click()
            wait_until(browser, lambda b: b.find_element(By.ID, "status").text == "live")
            wait_until(browser, lambda b: lifecycle_of("tight")(b) == "active" and lifecycle_of("steady")(b))

        await trio.to_thread.run_sync(log_in)
        ids = await trio.to_thread.run_sync(
            lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#keys td.id")]
        )
        assert ids == ["steady", "tight"]

        async with httpx.AsyncClient() as http:
            # Spend tight's one request a minute behind the router's back: its next call answers 429.
            spent = await http.post(
                served.sim_url + "/v1/chat/completions", headers={"authorization": f"Bearer {TIGHT}"}, json=CHAT
            )
            assert spent.status_code == 200
            answer = await http.post(served.url + "/v1/chat/completions", headers=served.client_headers, json=CHAT)
        assert answer.status_code == 200 and answer.headers["x-apikeyrouter-key-id"] == "steady"

        def sees_throttled() -> tuple[str, str, str]:
            wait_until(browser, lambda b: lifecycle_of("tight")(b) == "throttled")
            events = wait_until(browser, lambda b: b.find_element(By.ID, "events").text)
            decisions = wait_until(browser, lambda b: b.find_element(By.ID, "decisions").text)
            return events, decisions, browser.page_source

        events, decisions, source = await trio.to_thread.run_sync(sees_throttled)
        assert "tight: active → throttled" in events
        assert "→ steady" in decisions
        assert TIGHT not in source and STEADY not in source and ADMIN not in source
        screenshot = tmp_path / "dashboard.png"
        assert await trio.to_thread.run_sync(browser.save_screenshot, str(screenshot))
        assert screenshot.stat().st_size > 10_000
