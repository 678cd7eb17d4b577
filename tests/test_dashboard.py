"""The web dashboard and performance_report, looked at in headless Chromium.

The tests assert what a person would see on the page (worker rows, task bars, the error
panel) and save a screenshot of each page in infra.ARTIFACTS. Only the token tests do
without a browser.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

import infra
from pydist import (RemoteChannel, RemoteException, addprocs, pmap, performance_report, remotecall,
                    remotecall_fetch, rmprocs)
from pydist.web import dashboard, stop_dashboard, token
from test_cli import write

PAGE_TIMEOUT = 60          # the page updates once a second; the machine may be busy


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def url(cluster):
    """The dashboard of a master with two workers."""
    yield dashboard(port=0)
    stop_dashboard()


@pytest.fixture(scope="module")
def browser():
    infra.require(infra.browser_available(), f"headless Chromium ({infra.CHROMIUM}, {infra.CHROMEDRIVER}) "
                  "and selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(infra.CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1250"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(infra.CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    yield driver
    driver.quit()


def until(driver, condition, what: str):
    """Wait for condition(driver) to be truthy (the page redraws once a second)."""
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, PAGE_TIMEOUT).until(condition, message=f"the page never showed {what}")


def shown(css: str):
    return lambda driver: driver.find_elements("css selector", css)


def screenshot(driver, name: str) -> None:
    infra.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(infra.ARTIFACTS / f"{name}.png"))


def double(x):
    return 2 * x


def fail(x):
    raise ValueError(f"no good: {x}")


# -- the token ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/events", "/api/state", "/api/status"])
def test_without_the_token_every_path_is_403_and_shows_no_data(url, path):
    base = url.split("/?")[0]
    for query in ("", "?token=", "?token=" + "0" * 32, "?token=" + token()[:-1]):
        code, body = get(base + path + query)
        assert code == 403
        assert b"worker" not in body and b"cluster" not in body


def test_the_token_opens_the_state(url, cluster):
    code, body = get(url.replace("/?", "/api/state?"))
    assert code == 200
    assert {row["id"] for row in json.loads(body)["workers"]} == {1, *cluster}


def test_the_page_needs_nothing_from_elsewhere(url):
    code, page = get(url)
    assert code == 200 and b"<svg" in page
    assert not re.search(rb"<(script|link|img)[^>]*(src|href)=", page)    # everything inlined


def test_the_dashboard_listens_on_127_0_0_1_only(url):
    assert url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("value", [True, 0])
def test_addprocs_dashboard_serves_the_dashboard_and_prints_its_url(no_workers, capsys, value):
    try:
        [pid] = addprocs(1, dashboard=value)
        [url] = re.findall(r"pydist dashboard: (\S+)", capsys.readouterr().err)
        state = json.loads(get(url.replace("/?", "/api/state?"))[1])
        assert pid in {row["id"] for row in state["workers"]}
        assert dashboard() == url                  # one dashboard per master
    finally:
        stop_dashboard()


def test_pydist_dashboard_flag_prints_the_url(tmp_path):
    script = write(tmp_path / "job.py", """
        import json, urllib.request
        import pydist
        state = urllib.request.urlopen(pydist.dashboard().replace("/?", "/api/state?"), timeout=30)
        print(sorted(row["id"] for row in json.load(state)["workers"]))
    """)
    done = subprocess.run([sys.executable, "-m", "pydist.cli", "-p", "2", "--dashboard", str(script)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "pydist dashboard: http://127.0.0.1:" in done.stderr and "?token=" in done.stderr
    assert done.stdout.strip() == "[1, 2, 3]"


# -- what a person sees ------------------------------------------------------------------------
@pytest.mark.browser
def test_the_page_shows_a_row_per_worker(url, cluster, browser):
    browser.get(url)
    until(browser, shown(f'#workers tr[data-pid="{cluster[-1]}"]'), "the worker rows")
    rows = browser.find_elements("css selector", "#workers tbody tr")
    assert sorted(int(r.get_attribute("data-pid")) for r in rows) == [1, *cluster]
    assert "LocalManager" in rows[-1].text


@pytest.mark.browser
def test_a_remotecall_appears_as_a_task_bar(url, cluster, browser):
    browser.get(url)
    until(browser, shown("#workers tbody tr"), "the worker rows")
    assert remotecall_fetch(double, cluster[1], 21) == 42
    [bar] = until(browser, shown(f'rect.task[data-name="double"][data-pid="{cluster[1]}"]'),
                  "a task bar for double()")
    assert "double on worker" in bar.find_element("css selector", "title").get_attribute("textContent")
    screenshot(browser, "dashboard-task")


@pytest.mark.browser
def test_a_removed_worker_disappears_from_the_page(url, cluster, browser):
    [extra] = addprocs(1)
    browser.get(url)
    until(browser, shown(f'#workers tr[data-pid="{extra}"]'), f"worker {extra}'s row")
    rmprocs(extra, waitfor=30)
    until(browser, lambda d: not d.find_elements("css selector", f'#workers tr[data-pid="{extra}"]'),
          f"worker {extra}'s row gone")
    assert browser.find_elements("css selector", f'#workers tr[data-pid="{cluster[0]}"]')


@pytest.mark.browser
def test_a_remote_exception_shows_in_the_error_panel_with_its_traceback(url, cluster, browser):
    browser.get(url)
    with pytest.raises(RemoteException):
        remotecall_fetch(fail, cluster[0], 7)
    [error] = until(browser, shown(f'details.error[data-pid="{cluster[0]}"]'), "the error panel")
    assert "fail" in error.text and "ValueError: no good: 7" in error.text
    error.click()                                  # open it: the whole remote traceback
    assert "Traceback" in error.find_element("css selector", "pre").text
    screenshot(browser, "dashboard-error")


@pytest.mark.browser
def test_pmap_progress_and_worker_output_show_while_pmap_runs(url, cluster, browser):
    gate = RemoteChannel()

    def step(x, gate=gate):
        print(f"step {x}", flush=True)
        # work of various lengths, for the picture; none quick (pmap would merge quick batches
        # into one call, drawn as one bar)
        time.sleep(0.002 + 0.01 * (x % 7))
        if x >= 20:
            gate.fetch()                           # the last elements wait for the test
        return x

    browser.get(url)
    with pytest.raises(RemoteException):           # the docs' screenshot shows an error too
        remotecall_fetch(fail, cluster[0], 7)
    results = []
    runner = threading.Thread(target=lambda: results.append(pmap(step, range(24))))
    runner.start()
    try:
        until(browser, lambda d: any(p.get_attribute("value") == "20" for p in
                                     d.find_elements("css selector", ".pmap progress")), "pmap at 20 of 24")
        assert "20 / 24" in browser.find_element("css selector", ".pmap").text
        until(browser, lambda d: "step 19" in d.find_element("id", "output").text, "the worker output")
        until(browser, lambda d: len(d.find_elements("css selector", 'rect.task[data-name="step"]')) >= 20,
              "a bar per finished step")
        screenshot(browser, "dashboard")           # docs/dashboard.md shows this one
    finally:
        gate.put("go")
        runner.join(PAGE_TIMEOUT)
    assert results == [list(range(24))]


def test_performance_report_is_written_when_the_block_raises(cluster, tmp_path):
    report = tmp_path / "report.html"
    with pytest.raises(ZeroDivisionError):
        with performance_report(report):
            remotecall_fetch(double, cluster[0], 1)
            1 / 0
    assert '"double"' in report.read_text()


@pytest.mark.browser
def test_performance_report_draws_one_bar_per_call(cluster, browser, tmp_path):
    report = tmp_path / "report.html"
    remotecall_fetch(double, cluster[0], 0)        # before the block: not in the report
    with performance_report(report):
        futures = [remotecall(double, cluster[i % 2], i) for i in range(7)]
        assert [f.fetch() for f in futures] == [2 * i for i in range(7)]
        with pytest.raises(RemoteException):
            remotecall_fetch(fail, cluster[1], 1)
    browser.get(report.as_uri())
    bars = browser.find_elements("css selector", "rect.task")
    assert len(bars) == 8
    assert len(browser.find_elements("css selector", "rect.task.failed")) == 1
    totals = {row.find_elements("css selector", "td")[0].text: row.find_elements("css selector", "td")[1].text
              for row in browser.find_elements("css selector", "#totals tbody tr")}
    assert totals == {"double": "7", "fail": "1"}
    assert "http" not in report.read_text().split("<body>")[0]       # nothing fetched from elsewhere
    screenshot(browser, "performance-report")
