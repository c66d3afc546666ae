"""Shared fixtures: the site, built once per test process with the real `mkdocs build --strict`."""

from __future__ import annotations

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
def built_site(tmp_path_factory, pytestconfig) -> Path:
    """Build the whole site (lab notebooks executed by a real kernel) into a temp folder."""
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    pytestconfig.stash[_site_key] = seconds
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
