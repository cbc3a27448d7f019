"""The web console in a real browser: Debian's headless Chromium, driven by Selenium
through Debian's chromedriver (scripts/install-peers installs both), on loopback only.

An admin logs in, reads the overview (which refreshes itself), finds a message by its
recipient, holds and releases it, and removes a suppression. Each page is saved as a
screenshot: to $CONSOLE_SCREENSHOTS if set (README's pictures: docs/screenshots), else to
tests/out/screenshots; the path is printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import implicit
from conftest import PASSWORD, SENDER, USER, InProcess, Setup, wait_until
from consolekit import ADMIN, ADMIN_PASSWORD, with_console
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from relay import queueadmin

MESSAGE = (b"From: sender@example.com\r\nTo: reader@example.net\r\nSubject: invoice 42\r\n"
           b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <inv42@example.com>\r\n"
           b"\r\nbody\r\n")
SHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS")
             or Path(__file__).parent / "out" / "screenshots")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    monkeypatch.setenv("SE_AVOID_STATS", "true")  # Selenium Manager: no telemetry
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path="/usr/bin/chromedriver"))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def relay(make_setup, tmp_path: Path, start_relay, refused_url: str) -> InProcess:
    # SES cannot be reached: the message is deferred after one attempt and waits an hour
    # for the next, in the queue, to be held and released.
    setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=refused_url)
    setup.doc["queue"].update(min_backoff="1h", max_backoff="2h")
    with_console(setup, tmp_path)
    relay = start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["reader@example.net"], MESSAGE)
    assert relay.relay.spool is not None
    spool = relay.relay.spool
    wait_until(lambda: queueadmin.counts(spool)["deferred"] == 1)
    assert relay.relay.suppression is not None
    relay.relay.suppression.add("gone@example.net", "bounce", "feedback")
    assert relay.relay.events is not None
    relay.relay.events.flush()
    return relay


def shot(driver: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def wait_text(driver: WebDriver, css: str, text: str) -> None:
    WebDriverWait(driver, 20).until(
        lambda d: text in d.find_element(By.CSS_SELECTOR, css).text)


def test_an_admin_works_the_console_in_chromium(relay: InProcess, browser: WebDriver) -> None:
    base = f"http://127.0.0.1:{relay.relay.console_port}"
    browser.get(base + "/queue")  # no session: sent to the login page
    assert browser.current_url == base + "/login"
    browser.find_element(By.ID, "user").send_keys(ADMIN)
    browser.find_element(By.ID, "password").send_keys("not the password")
    browser.find_element(By.ID, "login").click()
    wait_text(browser, "#error", "Wrong user name or password")
    shot(browser, "login")
    browser.find_element(By.ID, "user").clear()
    browser.find_element(By.ID, "user").send_keys(ADMIN)
    browser.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.ID, "login").click()

    # The overview: who is logged in, the queue, the guard's state, the charts.
    wait_text(browser, "#who", f"logged in as {ADMIN}")
    assert browser.find_element(By.CSS_SELECTOR, "#counts .n-deferred").text == "1"
    assert "ConnectionError" in browser.find_element(By.ID, "upstream").text
    assert "watching" in browser.find_element(By.ID, "guard").text
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-bounce svg line.threshold")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-complaint svg line.threshold")
    # It refreshes itself, without a reload: the page's own marker survives.
    browser.execute_script("window.notReloaded = true;")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "live")
                                     .get_attribute("data-refreshed"))
    assert browser.execute_script("return window.notReloaded === true;")
    shot(browser, "overview")

    # Messages: find one by its recipient; its story as `ses-relay trace` tells it.
    browser.find_element(By.LINK_TEXT, "Messages").click()
    browser.find_element(By.ID, "q").send_keys("reader@example.net")
    browser.find_element(By.ID, "search").click()
    wait_text(browser, "#story", "queued")
    assert "reader@example.net" in browser.find_element(By.ID, "story").text
    shot(browser, "messages")

    # Queue: hold it, with a confirmation step, then release it.
    browser.find_element(By.LINK_TEXT, "Queue").click()
    browser.find_element(By.CSS_SELECTOR, "#queue a.hold").click()
    assert "Hold" in browser.find_element(By.TAG_NAME, "h1").text
    shot(browser, "queue-confirm")
    browser.find_element(By.ID, "confirm").click()
    wait_text(browser, ".flash", "hold: ")
    assert browser.find_element(By.CSS_SELECTOR, "#queue td.state").text == "hold"
    assert relay.relay.spool is not None
    assert len(relay.relay.spool.ids("hold")) == 1
    shot(browser, "queue")
    browser.find_element(By.CSS_SELECTOR, "#queue a.release").click()
    browser.find_element(By.ID, "confirm").click()
    wait_text(browser, ".flash", "release: ")
    assert browser.find_element(By.CSS_SELECTOR, "#queue td.state").text in ("active",
                                                                             "deferred")
    assert relay.relay.spool.ids("hold") == []

    # Suppression: remove an entry, with a confirmation step.
    browser.find_element(By.LINK_TEXT, "Suppression").click()
    wait_text(browser, "#entries", "gone@example.net")
    shot(browser, "suppression")
    browser.find_element(By.CSS_SELECTOR, "#entries a.remove").click()
    browser.find_element(By.ID, "confirm").click()
    wait_text(browser, ".flash", "removed gone@example.net")
    assert relay.relay.suppression is not None
    assert relay.relay.suppression.lookup("gone@example.net") is None

    # Reputation: pause delivery, with the reason.
    browser.find_element(By.LINK_TEXT, "Reputation").click()
    browser.find_element(By.ID, "reason").send_keys("finding the app that bounces")
    browser.find_element(By.ID, "pause").click()
    wait_text(browser, "#paused", "finding the app that bounces (by boss in the console)")
    shot(browser, "reputation")
    # Nothing the pages asked for came from outside the relay.
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);")
    assert urls and all(u.startswith(base + "/") for u in urls), urls
    # And the browser had nothing to complain about (CSP violations, script errors).
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"
                and "/login - Failed to load resource: the server responded with a status "
                    "of 401" not in e["message"]]  # the wrong password, on purpose
    assert problems == [], problems
