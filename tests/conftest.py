"""Shared fixtures: the site, built once per test process with the real `mkdocs build --strict`."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_site_key = pytest.StashKey[float]()


@pytest.fixture
def site_build_seconds(built_site, pytestconfig) -> float:
    return pytestconfig.stash[_site_key]


@pytest.fixture(scope="session")
def built_site(tmp_path_factory, pytestconfig, worker_id) -> Path:
    """Build the whole site (lab notebooks executed by a real kernel) into a temp folder.

    Under xdist the workers share one build: the first to arrive builds it, under a file
    lock, and the others wait and reuse it.
    """
    prebuilt = os.environ.get("ATTNBOOK_SITE")  # reuse a `mkdocs build` (iterating on tests)
    if prebuilt:
        pytestconfig.stash[_site_key] = 0.0
        return Path(prebuilt)
    base = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        base = base.parent  # the folder all workers of this run share
    site, done = base / "site", base / "site.seconds"
    with open(base / "site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                pytest.fail(
                    f"mkdocs build --strict failed ({proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr}",
                    pytrace=False,
                )
            done.write_text(str(time.perf_counter() - start))
    pytestconfig.stash[_site_key] = float(done.read_text())
    return site


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module on one thread, then restore the count.

    The package's unit tests use tiny tensors. On a shared 2-core machine each
    multi-threaded op waits for a thread the OS has parked, and the thread pool's
    hand-over costs dominate: 10x slower for small matrices, up to 200x for the tiled
    loops of attnbook.efficient. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def page_sizes(site: Path) -> dict[str, int]:
    """HTML bytes of each page, by its folder in the site."""
    return {
        "/" + str(page.relative_to(site).parent).strip("."): page.stat().st_size
        for page in sorted(site.rglob("index.html"))
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the build time, page sizes and browser figures the tests recorded (also under xdist)."""
    seen = set()
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = {k: v for k, v in getattr(report, "user_properties", ()) if k not in seen}
            seen.update(props)
            if "site_build_seconds" in props:
                listing = ", ".join(
                    f"{name} {size / 1024:.1f} KB"
                    for name, size in props["site_page_bytes"].items()
                )
                terminalreporter.write_line(
                    f"site: mkdocs build --strict took {props['site_build_seconds']:.1f} s; "
                    f"page HTML sizes: {listing}"
                )
            if "browser_pages_checked" in props:
                terminalreporter.write_line(
                    f"browser: {props['browser_pages_checked']} pages checked in Chromium"
                )
            if "first_visit_bytes" in props:
                weights = ", ".join(
                    f"{name} {size / 1024:.0f} KB"
                    for name, size in props["first_visit_bytes"].items()
                )
                terminalreporter.write_line(f"browser: first-visit transfer: {weights}")


@pytest.fixture(scope="session")
def site_url(built_site):
    """The built site, served on 127.0.0.1 for the browser tests."""
    from tests.browser import serve

    with serve(built_site) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright (tests/browser.py)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM_ARGS, chromium_path

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, site_url):
    """A fresh desktop-sized page; ``page.errors`` collects console errors and page errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()
