"""The dashboard at `/`, in a real headless chromium driven by Selenium, against real `livelm
serve` processes (the tiny model, API keys on) and a `--follow` replica of the same store.

Debian's chromium and chromedriver (`scripts/setup.sh --dev` installs them) are used as they
are: the driver's path is given, so Selenium Manager never runs, and nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from tests.server_util import ServeProcess

# The browser itself, not Debian's launcher script (its flags are given below).
CHROMIUM = next(
    (p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if p), "chromium"
)
CHROMEDRIVER = "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason="needs Debian's chromium and chromium-driver: run scripts/setup.sh --dev "
    "(or apt-get install chromium chromium-driver)",
)

READ_KEY, WRITE_KEY = "dash-read-key-1234", "dash-write-key-5678"
WRITE = {"Authorization": f"Bearer {WRITE_KEY}"}
NEWS = [
    "Storm hits the coast as residents leave their homes.",
    "Markets rise after the central bank holds rates steady.",
    "New vaccine shows promise in early trials, researchers say.",
    "Senate passes the budget bill after a long night of debate.",
]


class Servers:
    def __init__(self, main: ServeProcess, replica: ServeProcess) -> None:
        self.main, self.replica = main, replica
        self.url, self.replica_url = main.url, replica.url

    def live(self, url: str | None = None) -> int:
        r = httpx.get(f"{url or self.url}/v1/snapshots", headers=WRITE, timeout=10)
        assert r.status_code == 200, r.text
        return int(r.json()["live"])


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """A learning server that publishes after every step, and a replica following its store."""
    tmp = tmp_path_factory.mktemp("dashboard")
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    keys = ["--api-key-read", READ_KEY, "--api-key-write", WRITE_KEY]
    publish = ["--publish-every-steps", "1", "--publish-every-s", "1"]
    main = ServeProcess(
        [*model, *keys, *publish, "--data-dir", str(tmp / "data")], tmp / "serve.log"
    )
    # Started at once: it waits for the first version the main server writes.
    replica = ServeProcess(
        [*model, *keys, "--follow", str(tmp / "data" / "snapshots")], tmp / "replica.log"
    )
    try:
        main.wait_ready()
        replica.wait_ready()
        yield Servers(main, replica)
    finally:
        replica.kill(signal.SIGTERM)
        main.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    tmp = tmp_path_factory.mktemp("chromium")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",  # the browser's own calls home, not the page's
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp / 'profile'}",
    ):
        options.add_argument(flag)
    # Every request the page makes (the DevTools Network events) and its console.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp / "chromedriver.log"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # were Selenium Manager ever asked: no network
        driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, check: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(check)


def text(driver: WebDriver, element_id: str) -> str:
    value: str = driver.find_element(By.ID, element_id).text
    return value


def shown(driver: WebDriver, element_id: str) -> bool:
    value: bool = driver.find_element(By.ID, element_id).is_displayed()
    return value


def open_page(driver: WebDriver, url: str, key: str | None = None) -> None:
    """The dashboard in a fresh state (no key kept from an earlier test), with `key` typed in."""
    driver.get(f"{url}/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    if key is not None:
        use_key(driver, key)


def use_key(driver: WebDriver, key: str) -> None:
    driver.find_element(By.ID, "key-input").send_keys(key + Keys.ENTER)


def chart(driver: WebDriver) -> dict[str, int]:
    svg = driver.find_element(By.ID, "loss-chart")
    return {
        "points": int(svg.get_attribute("data-points") or 0),
        "versions": int(svg.get_attribute("data-versions") or 0),
        "marks": len(svg.find_elements(By.CSS_SELECTOR, ".version-point, .canary-point")),
    }


def test_without_a_key_it_shows_nothing_and_asks_for_one(
    servers: Servers, browser: WebDriver
) -> None:
    open_page(browser, servers.url)
    until(browser, lambda d: shown(d, "locked"))
    assert "needs an API key" in text(browser, "locked-message")
    assert not shown(browser, "board") and not shown(browser, "live")
    assert browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr") == []

    use_key(browser, "not-a-key")
    until(browser, lambda d: "refused (401)" in text(d, "locked-message"))
    assert "not valid" in text(browser, "locked-message")
    assert not shown(browser, "board")
    assert "not-a-key" not in browser.current_url  # the key never goes in an address


def test_it_renders_the_live_version_with_a_read_key(servers: Servers, browser: WebDriver) -> None:
    open_page(browser, servers.url, READ_KEY)
    live = servers.live()
    until(browser, lambda d: text(d, "live-version") == f"v{live}")
    assert text(browser, "stat-version") == f"v{live}"
    assert browser.find_element(By.ID, f"version-{live}").get_attribute("class") == "live-row"
    assert READ_KEY not in browser.current_url
    # Kept for this tab only, and sent as a header.
    assert browser.execute_script("return sessionStorage.getItem('livelm.apiKey')") == READ_KEY


def ask(driver: WebDriver, prompt: str) -> None:
    """Type a prompt into the page's box, send it, and wait until both panes are answered."""
    box = driver.find_element(By.ID, "prompt-input")
    box.clear()
    box.send_keys(prompt)
    driver.find_element(By.ID, "prompt-send").click()
    until(driver, lambda d: d.find_element(By.ID, "prompt-send").is_enabled())
    until(driver, lambda d: "…" not in text(d, "answer-live") + text(d, "answer-prev"))


def test_the_prompt_box_says_when_no_earlier_version_is_kept(
    servers: Servers, browser: WebDriver
) -> None:
    assert servers.live() == 1  # before any test sends documents: the base model only
    open_page(browser, servers.url, READ_KEY)
    until(browser, lambda d: text(d, "live-version") == "v1")
    ask(browser, "The storm")
    assert text(browser, "answer-live-version") == "(v1)" and text(browser, "answer-live")
    assert text(browser, "answer-prev-version") == ""
    assert "No version older than v1 is kept" in text(browser, "answer-prev")
    assert not shown(browser, "prompt-error")


def test_the_chart_gains_a_point_after_a_publish(servers: Servers, browser: WebDriver) -> None:
    open_page(browser, servers.url, READ_KEY)
    until(browser, lambda d: text(d, "live-version") == f"v{servers.live()}")
    # The baseline is a drawn timeline (it holds the startup version at least), not an empty
    # chart that the next poll would fill with the versions it already had.
    until(browser, lambda d: chart(d)["versions"] > 0)
    before, live = chart(browser), servers.live()
    docs = [
        {"id": f"chart-{i}", "text": t, "time": f"2020-03-0{i + 1}"} for i, t in enumerate(NEWS)
    ]
    r = httpx.post(f"{servers.url}/v1/documents", json=docs, headers=WRITE, timeout=10)
    assert r.status_code == 202, r.text

    until(browser, lambda d: servers.live() > live)
    # The versions and the steps' points come from one poll of the timeline, which may fall
    # between the publish and the step's record: wait for both.
    after = until(
        browser,
        lambda d: (
            (c := chart(d))["versions"] > before["versions"]
            and c["points"] > before["points"]
            and c
        ),
    )
    assert after["marks"] > before["marks"]
    # The documents have times: the x axis is stream time, its ticks dates of March 2020.
    svg = browser.find_element(By.ID, "loss-chart")
    assert svg.get_attribute("data-axis") == "stream"
    assert any(t.text.startswith("2020-03") for t in svg.find_elements(By.TAG_NAME, "text"))
    until(browser, lambda d: text(d, "live-version") == f"v{servers.live()}")


def test_rollback_from_the_page_needs_a_write_key(servers: Servers, browser: WebDriver) -> None:
    live = servers.live()
    if live == 1:  # a version to roll back from
        r = httpx.post(f"{servers.url}/v1/documents", json={"text": NEWS[0]}, headers=WRITE)
        assert r.status_code == 202, r.text
        live = until(browser, lambda d: servers.live() > 1 and servers.live())
    target = live - 1
    open_page(browser, servers.url, READ_KEY)
    until(browser, lambda d: text(d, "live-version") == f"v{live}")

    browser.find_element(By.ID, f"rollback-{target}").click()
    until(browser, lambda d: shown(d, "versions-error"))
    error = text(browser, "versions-error")
    assert "403" in error and "write key" in error
    assert servers.live() == live  # nothing changed

    use_key(browser, WRITE_KEY)
    until(browser, lambda d: not shown(d, "versions-error"))
    until(browser, lambda d: d.find_element(By.ID, f"rollback-{target}").is_enabled())
    browser.find_element(By.ID, f"rollback-{target}").click()
    until(browser, lambda d: text(d, "versions-ok") == f"v{target} is live")
    assert servers.live() == target
    until(browser, lambda d: text(d, "live-version") == f"v{target}")
    assert not browser.find_element(By.ID, f"rollback-{target}").is_enabled()


def test_the_prompt_box_answers_from_the_live_and_the_previous_version(
    servers: Servers, browser: WebDriver
) -> None:
    """Both panes answer now: the live version, and the newest kept version older than it,
    named in its request as `livelm@N` (the rollback above left newer ones kept too)."""
    if servers.live() == 1:  # run alone: a version to compare with
        r = httpx.post(f"{servers.url}/v1/documents", json={"text": NEWS[1]}, headers=WRITE)
        assert r.status_code == 202, r.text
        until(browser, lambda d: servers.live() > 1)
    live = servers.live()
    models = httpx.get(f"{servers.url}/v1/models", headers=WRITE, timeout=10).json()["data"]
    previous = max(
        m["version"] for m in models if m["id"].startswith("livelm@") and m["version"] < live
    )
    open_page(browser, servers.url, READ_KEY)
    until(browser, lambda d: text(d, "live-version") == f"v{live}")
    ask(browser, "The storm")
    assert not shown(browser, "prompt-error"), text(browser, "prompt-error")
    assert text(browser, "answer-live-version") == f"(v{live})"
    assert text(browser, "answer-prev-version") == f"(v{previous})"
    assert text(browser, "answer-live") and text(browser, "answer-prev")
    # The right pane is that version's answer: the API gives the same for the same name.
    body = {
        "model": f"livelm@{previous}",
        "prompt": "The storm",
        "max_tokens": 32,
        "temperature": 0,
    }
    r = httpx.post(f"{servers.url}/v1/completions", json=body, headers=WRITE, timeout=60)
    assert r.status_code == 200 and r.headers["X-Livelm-Version"] == str(previous)
    expected = r.json()["choices"][0]["text"] or "(an empty answer: the model ended at once)"
    assert text(browser, "answer-prev").split() == expected.split()  # as rendered in a <pre>
    assert "livelm@" in text(browser, "prompt-note")


def test_a_follow_replica_serves_the_dashboard(servers: Servers, browser: WebDriver) -> None:
    open_page(browser, servers.replica_url, READ_KEY)
    until(browser, lambda d: text(d, "live-version") == f"v{servers.live(servers.replica_url)}")
    assert browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")


def test_the_page_makes_no_request_outside_its_server(servers: Servers, browser: WebDriver) -> None:
    """Every request the page made in all the tests above (DevTools' Network events, and the
    page's own resource timings) went to the server it came from; the console shows no error
    but the API's refusals (a blocked request to another host would be one)."""
    open_page(browser, servers.url, READ_KEY)
    until(browser, lambda d: text(d, "live-version").startswith("v"))
    until(browser, lambda d: d.execute_script("return document.readyState") == "complete")
    origins = (servers.url + "/", servers.replica_url + "/")
    sent = []
    for entry in browser.get_log("performance"):  # type: ignore[attr-defined]
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            sent.append(message["params"]["request"]["url"])
    assert any(u.startswith(servers.url + "/dashboard/app.js") for u in sent)
    assert any(u.startswith(servers.url + "/v1/monitor/") for u in sent)
    # On the network (chrome:// is the browser's own start tab, data: the page's empty icon).
    network = [u for u in sent if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    outside = [u for u in network if not u.startswith(origins)]
    assert outside == []
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert resources and all(u.startswith(servers.url + "/") for u in resources), resources
    errors = [
        e["message"]
        for e in browser.get_log("browser")  # type: ignore[attr-defined]
        if e["level"] == "SEVERE" and "status of 40" not in e["message"]
    ]
    assert errors == []
    page = httpx.get(f"{servers.url}/", timeout=10)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # Only the page's own files are served from the folder, by name.
    assert httpx.get(f"{servers.url}/dashboard/index.html", timeout=10).status_code == 404
    missing = httpx.get(f"{servers.url}/dashboard/nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "name"
