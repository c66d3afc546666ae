"""Shared fixtures: the site, built once per test process with the real `mkdocs build --strict`."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
            )
            if proc.returncode != 0:
                pytest.fail(f"mkdocs build --strict failed ({proc.returncode}):\n{proc.stdout}\n"
                            f"{proc.stderr}", pytrace=False)
            done.write_text(str(time.perf_counter() - start))
    pytestconfig.stash[_site_key] = float(done.read_text())
    return site


def page_sizes(site: Path) -> dict[str, int]:
    """HTML bytes of each page, by its folder in the site."""
    return {"/" + str(page.relative_to(site).parent).strip("."): page.stat().st_size
            for page in sorted(site.rglob("index.html"))}


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Print the build time and page sizes that test_site.py recorded (also under xdist)."""
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = dict(getattr(report, "user_properties", ()))
            if "site_build_seconds" in props:
                listing = ", ".join(f"{name} {size / 1024:.1f} KB"
                                    for name, size in props["site_page_bytes"].items())
                terminalreporter.write_line(
                    f"site: mkdocs build --strict took {props['site_build_seconds']:.1f} s; "
                    f"page HTML sizes: {listing}")
                return
