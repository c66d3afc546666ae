"""Text to train on, shipped with the package so that every reader gets the same numbers.

``pydoc_topics()`` is the dictionary of help pages that CPython keeps in
``pydoc_data.topics`` (what ``help("if")`` shows), frozen as it is in CPython 3.11.7.
The module itself changes between Python releases (3.11.2 has 1,049 more characters
and 17 different topics), which would change every loss printed in chapter 14; this
copy does not.

The text is part of the Python documentation, copyright the Python Software
Foundation, and is redistributed under the PSF License Agreement
(https://docs.python.org/3/license.html).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

__all__ = ["pydoc_topics"]

_PYDOC_TOPICS = Path(__file__).parent / "data" / "pydoc_topics.json"


@cache
def _load() -> dict[str, str]:
    return json.loads(_PYDOC_TOPICS.read_text(encoding="utf-8"))


def pydoc_topics() -> dict[str, str]:
    """CPython 3.11.7's ``pydoc_data.topics``: 79 help topics, topic name -> text."""
    return dict(_load())
