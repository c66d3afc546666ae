"""Shared fixtures: the site, built once per test process with the real `mkdocs build --strict`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_site_key = pytest.StashKey[dict]()


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
    pytestconfig.stash[_site_key] = {"seconds": seconds, "site": site}
    return site


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    info = config.stash.get(_site_key, None)
    if not info:
        return
    site: Path = info["site"]
    sizes = {
        str(page.relative_to(site).parent) or "/": page.stat().st_size
        for page in sorted(site.rglob("index.html"))
    }
    listing = ", ".join(f"{name} {size / 1024:.1f} KB" for name, size in sizes.items())
    terminalreporter.write_line(
        f"site: mkdocs build --strict took {info['seconds']:.1f} s; page HTML sizes: {listing}"
    )
