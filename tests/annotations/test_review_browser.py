"""The review loop in a real browser: `curate review` serves the App, a reviewer tags in it, pull.

Headless Debian Chromium driven by Playwright (no browser can be downloaded, so the
executable is given). In CI (CI=true) a missing chromium is a failure, locally a skip.
The screenshot goes to test-artifacts/review-app.png.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import pytest
from conftest import make_tiny_dataset

from curate.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
CURATE = str(Path(sys.executable).with_name("curate"))
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed (CI=true): apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return path


def read_url(proc: subprocess.Popen, timeout: float) -> str:
    """The URL `curate review` prints on stdout once the App answers."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"curate review exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if sel.select(timeout=1):
            line = proc.stdout.readline().strip()
            if line.startswith("http://"):
                return line
    raise AssertionError("curate review printed no URL in time")


def tag_first_sample_in_app(page, tag: str) -> None:
    """Select the first grid tile and tag it, as a reviewer would."""
    for text in ("Dismiss",):  # the App's promotion popover covers the grid
        try:
            page.get_by_text(text, exact=True).click(timeout=3000)
        except Exception:  # noqa: BLE001 - not shown in every version
            pass
    tile = page.locator("[data-cy=looker]").first
    tile.hover()
    box = tile.bounding_box()
    try:
        page.locator("[data-cy=looker-checkbox-]").first.click(timeout=5000)
    except Exception:  # noqa: BLE001 - the checkbox shows on hover only; click where it appears
        page.mouse.click(box["x"] + 14, box["y"] + 14)
    page.locator("[data-cy=action-tag-sample-labels]").click()
    field = page.get_by_placeholder("+ tag selected sample")
    field.fill(tag)
    field.press("Enter")
    page.get_by_text("Apply", exact=True).click(timeout=10_000)


@pytest.mark.slow
@pytest.mark.system
def test_review_in_browser_then_pull(tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    from annotations.app import free_port
    from annotations.database import connect

    folder = make_tiny_dataset(tmp_path / "ds-browser")
    n = read_manifest(folder).height
    port = free_port()
    name = f"t-browser-{uuid.uuid4().hex[:8]}"  # FiftyOne may attach to another process's database
    proc = subprocess.Popen([CURATE, "review", str(folder), "--port", str(port), "--name", name,
                             "--media-dir", str(tmp_path / "media")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = read_url(proc, timeout=240)
        assert url == f"http://127.0.0.1:{port}/datasets/{name}"
        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url, timeout=120_000)
            page.wait_for_selector("[data-cy=looker]", timeout=120_000)  # the grid rendered
            page.wait_for_function(
                "n => (document.querySelector('[data-cy=entry-counts]') || {}).innerText === n + ' samples'",
                arg=n, timeout=60_000)
            assert page.locator("[data-cy=entry-counts]").inner_text() == f"{n} samples"
            tag_first_sample_in_app(page, "reject")
            fo = connect()
            ds = fo.load_dataset(name)
            deadline = time.monotonic() + 30
            while not ds.match_tags("reject").count() and time.monotonic() < deadline:
                time.sleep(0.5)
            page.reload()  # the grid shows the new tag after a refresh
            page.wait_for_selector("[data-cy=looker]", timeout=120_000)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "review-app.png"))
            browser.close()
        rejected = ds.match_tags("reject").values("key")
        assert len(rejected) == 1, "the tag set in the App did not reach the database"
        # a label correction through the FiftyOne API, on the same database
        other = ds.match(fo.ViewField("key") != rejected[0]).first()
        other.attr.label = "purple"
        other.save()
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rc = proc.wait(60)
    assert rc == 0, proc.stderr.read()[-2000:]
    with pytest.raises(ConnectionRefusedError):  # the App server is gone
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    from curate.cli import main  # the pull in this process: FiftyOne is imported and connected here already

    with pytest.raises(SystemExit) as e:
        main(["review", "pull", str(folder), "--name", name])
    assert e.value.code == 0
    df = read_manifest(folder, include_rejected=True)
    status = dict(df.select("key", "review_status").iter_rows())
    assert status[rejected[0]] == "reject"
    fixed = df.filter(pl.col("key") == other.key).row(0, named=True)
    assert (fixed["attr"], fixed["attr_original"], fixed["review_status"]) == ("purple", other.key.split("_")[0],
                                                                               "accept")
    assert rejected[0] not in read_manifest(folder, include_rejected=False)["key"].to_list()
    assert (ARTIFACTS / "review-app.png").stat().st_size > 10_000
    fo.delete_dataset(name)
