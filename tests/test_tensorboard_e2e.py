"""End to end as a user: a real capture from `scripts/profiling.py` (the `decode_capture`
session fixture), opened in a real `tensorboard --logdir` server, read through TensorBoard's
HTTP API (XProf's profile plugin, xprof 2.24.2) and shown in headless Chromium: the run, its
tools, and the trace viewer holding the run's decode steps.

The browser test needs Chromium, chromedriver and selenium (Debian's `chromium` and
`chromium-driver`, and the `dev` extra); without one it is skipped with one line naming it,
except where REQUIRE_BROWSER_E2E is set (`.ci/run` sets it), where that is a failure.

TensorBoard writes its converters' caches (hlo protos, sstables, cache_version.txt) into the
run directory it serves, so the server gets a byte-for-byte copy of the capture's logdir:
the shared session capture stays exactly as `profiling.py` published it for other tests.
"""
from __future__ import annotations

import gzip
import json
import os
import importlib.util
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.captures import free_port, profiling_env
from tests.servers import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
START_TIMEOUT_S = 90
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1600,1000"]


def _tensorboard_cmd() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "tensorboard.main"]


def _get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        if r.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return r.status, body


class TensorBoard:
    def __init__(self, logdir: str, port: int, log_path: str):
        self.logdir, self.port, self.log_path = logdir, port, log_path
        self.base = f"http://localhost:{port}"
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([*_tensorboard_cmd(), "--logdir", logdir, "--port", str(port), "--bind_all"],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=profiling_env(),
                                     start_new_session=True)

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()[-n:]

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"tensorboard exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return _get(self.base + "/data/plugins_listing", timeout=5)[0] == 200
            except (urllib.error.URLError, ConnectionError, OSError):
                return False
        wait_until(serving, timeout_s, f"tensorboard to serve {self.base}", poll_s=0.5)

    def json(self, path: str, **params):
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            status, body = _get(url)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"GET {url}: HTTP {e.code} {e.read()[:500]!r}\n{self.log_tail()}") from None
        assert status == 200, f"GET {url}: HTTP {status}"
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log.close()


@pytest.fixture(scope="module")
def served(decode_capture, tmp_path_factory):
    """(TensorBoard serving a copy of the decode capture's logdir, the run's name, its run_info)."""
    assert decode_capture.proc.returncode == 0, decode_capture.proc.stderr[-3000:]
    run_name = os.path.basename(decode_capture.run)
    run_info = decode_capture.run_info()
    tmp = tmp_path_factory.mktemp("tensorboard")
    logdir = str(tmp / "logdir")
    shutil.copytree(decode_capture.profile_dir, logdir)
    tb = TensorBoard(logdir, free_port(), str(tmp / "tensorboard.log"))
    try:
        tb.wait_ready()
        yield tb, run_name, run_info
    finally:
        tb.stop()


# ---- (a) TensorBoard's HTTP API -----------------------------------------------------------
def _trace_viewer_tool(tools: list[str]) -> str:
    """XProf lists the trace viewer as `trace_viewer` or, multi-host capable, `trace_viewer@`."""
    found = [t for t in tools if t.rstrip("@") == "trace_viewer"]
    assert found, f"no trace_viewer among the run's tools {tools}"
    return found[0]


def test_profile_plugin_lists_the_run_and_its_tools(served):
    tb, run_name, _ = served
    plugins = tb.json("/data/plugins_listing")
    assert "profile" in plugins, sorted(plugins)
    assert plugins["profile"]["enabled"] is True, plugins["profile"]
    assert tb.json("/data/plugin/profile/runs") == [run_name]
    tools = tb.json("/data/plugin/profile/run_tools", run=run_name)
    _trace_viewer_tool(tools)
    for tool in ("overview_page", "op_profile", "memory_profile"):
        assert tool in tools, tools


def test_trace_viewer_data_holds_the_engine_decode_steps(served):
    tb, run_name, run_info = served
    tool = _trace_viewer_tool(tb.json("/data/plugin/profile/run_tools", run=run_name))
    hosts = tb.json("/data/plugin/profile/hosts", run=run_name, tag=tool)
    assert len(hosts) == 1 and hosts[0]["hostname"], hosts
    trace = tb.json("/data/plugin/profile/data", run=run_name, tag=tool, host=hosts[0]["hostname"])
    # The engine's step scopes ("decode" TraceMes with step_num) show as "decode <step>".
    shown = sorted(int(m.group(1)) for e in trace["traceEvents"] if e.get("ph") == "X"
                   for m in [re.fullmatch(r"decode (\d+)", e.get("name", ""))] if m)
    published = run_info["verification"]["steps"]
    assert set(published) == {"decode"}, published
    assert shown == sorted(published["decode"]), (shown, published)
    # run_to_completion -n 1 over a batch of 4: decode batches 4, 3, 2, 1, one step each.
    assert len(shown) == len(run_info["workload"]["expected_decode_batches"]) == 4, run_info["workload"]
    assert not any(e.get("name", "").startswith("prefill") for e in trace["traceEvents"])


# ---- (b) the profile page in headless Chromium --------------------------------------------
def _missing_browser_piece() -> str | None:
    """What this machine lacks to drive a headless browser, in a few words; None if nothing."""
    if not os.access(CHROMIUM, os.X_OK):
        return "chromium not installed (apt-get install chromium)"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return "chromedriver not installed (apt-get install chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser_pieces():
    """Skip (fail where REQUIRE_BROWSER_E2E is set) before the capture and TensorBoard start."""
    missing = _missing_browser_piece()
    if missing and os.environ.get("REQUIRE_BROWSER_E2E"):
        pytest.fail(f"{missing}, and REQUIRE_BROWSER_E2E is set", pytrace=False)
    if missing:
        pytest.skip(missing)


@pytest.fixture
def browser(browser_pieces, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER,
                                              log_output=str(tmp_path / "chromedriver.log")),
                              options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _page_evidence(driver, tmp_path, name: str) -> str:
    """Save a screenshot and the page source; return the visible text for the failure message."""
    try:
        driver.save_screenshot(str(tmp_path / f"{name}.png"))
        (tmp_path / f"{name}.html").write_text(driver.page_source)
        text = driver.find_element("tag name", "body").text
    except Exception as e:  # the evidence must not hide the real failure
        text = f"(could not read the page: {e!r})"
    return f"page text ({driver.current_url}), screenshot and source in {tmp_path}:\n{text[:4000]}"


# The catapult trace viewer's model (in its own iframe): the titles of the engine's step slices.
STEP_SLICES_JS = """
const viewer = document.querySelector('tf-trace-viewer');
const model = viewer && viewer._traceViewer && viewer._traceViewer.model;
if (!model) return null;
const titles = [];
for (const thread of model.getAllThreads())
  for (const slice of thread.sliceGroup.slices)
    if (/^(prefill|decode) \\d+$/.test(slice.title)) titles.push(slice.title);
return titles;
"""
TRACE_VIEWER_FRAME = "//iframe[contains(@src, 'trace_viewer_index.html')]"


def _trace_viewer_steps(driver) -> list[str] | None:
    """The step slices the trace viewer shows, None until it has loaded some. Entered afresh on
    every poll: XProf may replace the viewer's iframe while it loads."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    try:
        driver.switch_to.default_content()
        driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
        driver.switch_to.frame(driver.find_element(By.XPATH, TRACE_VIEWER_FRAME))
        return driver.execute_script(STEP_SLICES_JS) or None
    except WebDriverException:
        return None


def test_profile_page_opens_the_run_in_the_trace_viewer(browser_pieces, served, browser, tmp_path):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    tb, run_name, run_info = served
    wait = WebDriverWait(browser, START_TIMEOUT_S)
    browser.get(f"{tb.base}/#profile")
    step = "TensorBoard's profile dashboard frame"
    try:
        # TensorBoard hosts the plugin's Angular app in an iframe (loading_mechanism IFRAME).
        wait.until(EC.frame_to_be_available_and_switch_to_it((By.TAG_NAME, "iframe")))
        step = f"the run {run_name!r} under Sessions"
        wait.until(lambda d: run_name in d.find_element(By.TAG_NAME, "body").text)
        step = "the Tools selector"
        tools = wait.until(EC.element_to_be_clickable((
            By.XPATH, "//div[starts-with(normalize-space(text()), 'Tools (')]"
                      "/following-sibling::mat-form-field//mat-select")))
        tools.click()
        step = "the Trace Viewer tool in the Tools list"
        option = wait.until(EC.visibility_of_element_located((
            By.XPATH, "//mat-option[normalize-space(.)='Trace Viewer']")))
        option.click()
        step = "the trace viewer to show the run's decode steps"
        shown = wait.until(_trace_viewer_steps)
    except WebDriverException as e:
        pytest.fail(f"waiting for {step}: {type(e).__name__}; {_page_evidence(browser, tmp_path, 'profile-page')}")
    src = browser.execute_script("return window.location.href")
    assert urllib.parse.quote(f"run={run_name}", safe="") in src, src  # this run's trace, not another's
    published = run_info["verification"]["steps"]["decode"]
    assert sorted(shown) == sorted(f"decode {n}" for n in published), (shown, published)
