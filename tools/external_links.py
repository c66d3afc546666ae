"""List the external links of the book's pages, with file and line (`make links`).

The strict site build already validates every internal link and anchor. External links
cannot be checked offline, so this command only lists them for a person to review; it
never fails the build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

LINK = re.compile(r"https?://[^\s)\]>\"'`]+")


def external_links(docs: Path) -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(docs.rglob("*")):
        if path.suffix not in (".md", ".py") or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            found += [(path.as_posix(), number, url.rstrip(".,;:")) for url in LINK.findall(line)]
    return found


def main() -> int:
    links = external_links(Path(sys.argv[1] if len(sys.argv) > 1 else "docs"))
    for path, number, url in links:
        print(f"{path}:{number}: {url}")
    print(
        f"{len(links)} external links, {len({u for _, _, u in links})} distinct "
        "(listed, not checked: the build is offline)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
