"""The dashboard in a real headless browser (Debian's chromium, driven by Selenium) over a live run.

A ``fedloom simulate`` process runs a slow toy federation and records it in its run
folder's store; the dashboard reads that folder while the browser polls it. The test
needs ``apt-get install chromium chromium-driver`` (the README's test command does it);
Selenium is pointed at those binaries, so nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedloom.observe.dashboard import start_dashboard
from fedloom.transport.grpc.security import Tokens

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ROUNDS = 6
MODULE = "dashboard_toy_task"

# Three clients pull x toward 1, 2 and 3, slowly (0.25 s per fit, so a round takes
# about 0.8 s and the browser sees the run while it goes). Client c reports
# loss = (x - target_c)^2 before its step; the central loss is |x - 2|.
TASK = """
import time

from fedloom.client import FunctionClient

TARGETS = (1.0, 2.0, 3.0)


def client_fn(context):
    target = TARGETS[context.partition_id]

    def fit(weights, config):
        time.sleep(0.25)
        loss = float((weights["x"][0] - target) ** 2)
        return {"x": weights["x"] + 0.5 * (target - weights["x"])}, 1, {"loss": loss}

    return FunctionClient(weights={"x": [0.0]}, fit=fit)


def evaluate(weights, server_round):
    return {"loss": abs(float(weights["x"][0]) - 2.0)}
"""

CONFIG = f"""
[run]
rounds = {ROUNDS}
name = "live"

[clients]
app = "{MODULE}:client_fn"
num_clients = 3
evaluate = "{MODULE}:evaluate"

[strategy]
name = "fedavg"
fraction_evaluate = 0.0
"""

# One read of the page, in one script task, so the counter and the plots come from the
# same poll of the API.
READ_PAGE = """
const points = (metric) => Array.from(document.querySelectorAll(
    `figure[data-metric="${metric}"] circle.point`)).map((c) => Number(c.dataset.round));
return {
  counter: document.getElementById("round-counter").textContent,
  status: document.getElementById("run-status").textContent,
  total: document.getElementById("rounds-total").textContent,
  fit: points("fit.loss"),
  central: points("central.loss"),
  clients: Array.from(document.querySelectorAll("#clients tbody tr")).map((r) => r.dataset.clientId),
  config: document.getElementById("config").textContent,
  error: document.getElementById("error").textContent,
};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{missing} not found: install Debian's browser with "
            "`apt-get install -y chromium chromium-driver` (the README's test command does)."
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1700",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def live_run(tmp_path: Path) -> Iterator[Path]:
    """A ``fedloom simulate`` process recording a slow run under ``tmp_path/runs``."""
    (tmp_path / f"{MODULE}.py").write_text(TASK)
    config = tmp_path / "live.toml"
    config.write_text(CONFIG)
    runs = tmp_path / "runs"
    runs.mkdir()
    command = [sys.executable, "-m", "fedloom.cli.main", "simulate", str(config)]
    process = subprocess.Popen(
        [*command, "--run-dir", str(runs), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield runs
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


def test_dashboard_follows_a_live_run_in_a_browser(
    browser: Any, live_run: Path, tmp_path: Path
) -> None:
    with start_dashboard(live_run) as board:
        browser.get(board.url)
        wait = WebDriverWait(browser, 40, poll_frequency=0.1)

        first = wait.until(lambda d: _running_with_rounds(d.execute_script(READ_PAGE)))
        later = wait.until(lambda d: _advanced(d.execute_script(READ_PAGE), first))
        final = wait.until(lambda d: _finished(d.execute_script(READ_PAGE)))
        screenshot = tmp_path / "dashboard.png"
        browser.save_screenshot(str(screenshot))

    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "dashboard.png")
    # seen while the run was going, then again when more rounds had finished
    assert first["status"] == "running"
    assert int(later["counter"]) > int(first["counter"])
    for page in (first, later, final):
        done = int(page["counter"])
        assert page["fit"] == list(range(1, done + 1)), page  # one point per finished round
        assert page["central"] == list(range(done + 1)), page  # and the initial weights' one
    assert final["counter"] == str(ROUNDS)
    assert final["total"] == str(ROUNDS)
    assert sorted(final["clients"]) == ["0", "1", "2"]
    assert '"name": "fedavg"' in final["config"]
    assert final["error"] == ""
    assert screenshot.stat().st_size > 10_000
    # the command also wrote TensorBoard event files into the run folder (on by default)
    events = EventAccumulator(str(live_run / "live"))
    events.Reload()
    assert [event.step for event in events.Scalars("fit/loss")] == list(range(1, ROUNDS + 1))
    assert [event.step for event in events.Scalars("client/2/fit/loss")] == list(
        range(1, ROUNDS + 1)
    )


def _running_with_rounds(page: dict[str, Any]) -> dict[str, Any] | None:
    ready = page["status"] == "running" and page["counter"].isdigit() and int(page["counter"]) >= 1
    return page if ready else None


def _advanced(page: dict[str, Any], first: dict[str, Any]) -> dict[str, Any] | None:
    return (
        page if page["counter"].isdigit() and int(page["counter"]) > int(first["counter"]) else None
    )


def _finished(page: dict[str, Any]) -> dict[str, Any] | None:
    return page if page["status"] == "finished" else None


def test_dashboard_page_asks_for_the_token_and_takes_it_from_the_url_fragment(
    browser: Any, runs_dir: Path
) -> None:
    token = "dashboard-token-0123456789"
    with start_dashboard(runs_dir, tokens=Tokens(shared_secret=token)) as board:
        browser.get(board.url)
        wait = WebDriverWait(browser, 20, poll_frequency=0.1)
        asked = wait.until(lambda d: d.execute_script(ASKED))
        browser.get(f"{board.url}#token={token}&run=run-alpha")
        shown = wait.until(lambda d: _shown(d.execute_script(READ_PAGE)))
        fragment = browser.execute_script("return location.hash")

    assert "needs the server's token" in asked
    assert shown["counter"] == "3"
    assert shown["fit"] == [1, 2, 3]
    assert "token" not in fragment  # removed from the address bar once read
    assert fragment == "#run=run-alpha"


ASKED = """
const form = document.getElementById("token-form");
return form.hidden ? null : document.getElementById("error").textContent;
"""


def _shown(page: dict[str, Any]) -> dict[str, Any] | None:
    return page if page["status"] == "finished" else None
