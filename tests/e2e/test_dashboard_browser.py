"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``
and ``chromium-driver``, driven by selenium) against the real hub, broker,
gateway and simulated sensors started as in ``tests/e2e/test_hub.py``.

A device page takes new readings live (no reload), its command form
reaches the device, and a hub bound beyond loopback refuses a page that
has no token. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.e2e.test_hub import CLI, _start_hub, world  # noqa: F401 - world is a fixture
from tests.polling import wait_until


def _wait(pred, timeout: float = 30.0):
    return wait_until(pred, timeout, 0.2)


pytestmark = pytest.mark.mosquitto

# $MOTESEAL_CHROMIUM / $MOTESEAL_CHROMEDRIVER point elsewhere (another build, or none to see the skip).
CHROMIUM = os.environ.get("MOTESEAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = (os.environ.get("MOTESEAL_CHROMEDRIVER") or shutil.which("chromedriver")
                or "/usr/bin/chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                                           "(pip install -e '.[test]')")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(f"no headless Chromium: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install "
                "chromium chromium-driver; scripts/setup.sh does)",
                allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _sim(w) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["device", "simulate", "--bundle-dir", str(w["tmp"] / "bundles"),
                                   "--interval", "0.5", "--seconds", "90", "--json",
                                   "--state-dir", str(w["tmp"] / "state")],
                            stdout=open(w["tmp"] / "sim.out", "w"), stderr=subprocess.STDOUT,
                            env=w["env"])


def _rows(driver, table: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr"))


def test_the_device_page_updates_live_and_its_form_reaches_the_device(world, browser) -> None:
    w = world
    status = next(w["tmp"].glob("gateway-*/status.json"), None) or next(w["tmp"].glob("gateway-*"))
    cfg = (w["tmp"] / "hub.toml").read_text().replace('gateway_status = ""',
                                                        f'gateway_status = "{status.parent / "status.json"}"')
    (w["tmp"] / "hub.toml").write_text(cfg)
    hub, err = _start_hub(w)
    sim = _sim(w)
    try:
        url = _wait(lambda: (m := re.search(r"dashboard at (http://\S+)", err.read_text())) and m.group(1))
        assert url, err.read_text()
        browser.get(url)
        assert _wait(lambda: _rows(browser, "fleet") >= 2 and "h-1" in browser.find_element(
            By.ID, "fleet").text, 40), browser.page_source[:2000]
        assert _wait(lambda: browser.find_element(By.ID, "live").text == "live")
        browser.find_element(By.LINK_TEXT, "h-1").click()
        assert _wait(lambda: browser.current_url.endswith("/device/h-1"))
        assert _wait(lambda: _rows(browser, "recent") > 0, 30), browser.page_source[:2000]
        # A marker set on this page survives only if the page is never reloaded.
        browser.execute_script("window.__no_reload = 1;")
        first_rows = _rows(browser, "recent")
        first_points = int(browser.find_element(By.ID, "chart-t").get_attribute("data-points"))
        assert first_points > 0
        assert _wait(lambda: int(browser.find_element(By.ID, "chart-t").get_attribute("data-points"))
                     >= first_points + 3, 30)
        assert _rows(browser, "recent") > first_rows or first_rows == 50
        assert browser.execute_script("return window.__no_reload;") == 1
        # The chart draws: uPlot's canvas is there with a size.
        canvas = browser.find_element(By.CSS_SELECTOR, "#chart-t canvas")
        assert canvas.size["width"] > 100 and canvas.size["height"] > 50
        # A command typed into the page's form reaches the device.
        browser.find_element(By.ID, "cmd").send_keys("interval=2")
        browser.find_element(By.CSS_SELECTOR, "#command button").click()
        status = _wait(lambda: re.match(r"command \d+: (queued|sent)",
                                        browser.find_element(By.ID, "status").text), 15)
        assert status, browser.find_element(By.ID, "status").text
        assert _wait(lambda: any('"event": "from_peer"' in ln and '"device": "h-1"' in ln
                                 for ln in (w["tmp"] / "sim.out").read_text().splitlines()), 30)
        assert _wait(lambda: "command_sent" in browser.find_element(By.ID, "events").text, 15)
        browser.save_screenshot(str(w["tmp"] / "device.png"))
        # Back on the fleet page: both devices with live sessions, and the gateway's status.
        browser.get(url)
        assert _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#gateway table")
                     and "yes" in browser.find_element(By.ID, "gateway").text, 20), \
            browser.find_element(By.ID, "gateway").text
        assert _wait(lambda: browser.find_element(By.ID, "fleet").text.count(" s ") >= 2, 20), \
            browser.find_element(By.ID, "fleet").text
        browser.save_screenshot(str(w["tmp"] / "fleet.png"))
        # Nothing secret on the page.
        secrets = [w["broker"].passwords[s] for s in ("h-1", "h-2", "hub1")]
        secrets.append((w["tmp"] / "dashboard.token").read_text().strip())
        assert not any(s in browser.page_source for s in secrets)
    finally:
        sim.terminate()
        sim.wait(10)
        hub.terminate()
        assert hub.wait(15) == 0, err.read_text()


def test_a_page_without_the_token_is_refused_beyond_loopback(world, browser) -> None:
    w = world
    cfg = (w["tmp"] / "hub.toml").read_text().replace('bind = "127.0.0.1"             # anything else',
                                                        'bind = "0.0.0.0"             # anything else')
    cfg = cfg.replace("[home_assistant]\nenabled = true", "[home_assistant]\nenabled = false")
    (w["tmp"] / "hub.toml").write_text(cfg)
    hub, err = _start_hub(w)
    try:
        port = _wait(lambda: (m := re.search(r"dashboard at http://[^:]+:(\d+)/", err.read_text()))
                     and m.group(1))
        assert port, err.read_text()
        base = f"http://127.0.0.1:{port}/"
        for path in ("", "device/h-1"):
            browser.get(base + path)
            body = browser.find_element(By.TAG_NAME, "body").text
            assert "a token is required" in body, body
            assert not browser.find_elements(By.ID, "fleet")
        browser.save_screenshot(str(w["tmp"] / "refused.png"))
        # With the token once in the address, the cookie carries the page's own requests.
        token = (w["tmp"] / "dashboard.token").read_text().strip()
        browser.get(base + "?token=" + token)
        assert _wait(lambda: "peer hub1" in browser.find_element(By.ID, "peer").text, 20)
        browser.get(base)  # no token in the address now: the HttpOnly cookie is enough
        assert _wait(lambda: "peer hub1" in browser.find_element(By.ID, "peer").text, 20)
        assert browser.execute_script("return document.cookie;") == ""  # HttpOnly: not readable
    finally:
        hub.terminate()
        hub.wait(15)


