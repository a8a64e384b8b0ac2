"""Progress bars: widgets in an interactive notebook, text on a terminal, and sparse text in a
notebook executed headless (`wsss run`, the demo, the tests set `WSSS_TEXT_PROGRESS`), whose saved
outputs then show each bar's last state instead of a widget that a static viewer draws at 0%."""
from __future__ import annotations

import os
from typing import Any

from tqdm.auto import tqdm as _interactive
from tqdm.std import tqdm as _text

TEXT_ENV = "WSSS_TEXT_PROGRESS"


class _SparseText(_text):
    """Text bars that redraw at most every 30 s: a saved notebook keeps a few lines per bar."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("ascii", True)
        super().__init__(*args, **kwargs)


tqdm = _SparseText if os.environ.get(TEXT_ENV) else _interactive
