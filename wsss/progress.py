"""Progress bars: widgets in an interactive notebook, text on a terminal, and sparse text in a
notebook executed headless (`wsss run`, the demo, the tests set `WSSS_TEXT_PROGRESS`), whose saved
outputs then show each bar's last state instead of a widget that a static viewer draws at 0%, and
in the worker processes of a study (`wsss.parallel`), whose bars share the terminal."""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm as _interactive
from tqdm.std import tqdm as _text

TEXT_ENV = "WSSS_TEXT_PROGRESS"


class _SparseText(_text):
    """Text bars that redraw at most every 30 s: a saved notebook keeps a few lines per bar."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("ascii", True)
        super().__init__(*args, **kwargs)


class _Bars:
    """`tqdm(...)` and `tqdm.write(...)` in the style the environment asks for when the bar starts,
    not when this module was imported: a worker process (`wsss.parallel`) switches to sparse text
    after its imports, since the bars of several processes share one terminal or log."""

    @staticmethod
    def style() -> type[_text]:
        return _SparseText if os.environ.get(TEXT_ENV) else _interactive

    def __call__(self, *args: Any, **kwargs: Any) -> _text:
        return self.style()(*args, **kwargs)

    def write(self, *args: Any, **kwargs: Any) -> None:
        self.style().write(*args, **kwargs)


tqdm = _Bars()


T = TypeVar("T")

# Seconds each named loop ("train", "class_maps") spent waiting for its next batch, summed over the
# process: a data loader's stall, the time the device sat idle while images were read, decoded and
# augmented. `python -m wsss.benchmarks.pipeline` reports it per stage.
DATA_WAIT: dict[str, float] = {}


def waited(items: Iterable[T], loop: str) -> Iterator[T]:
    """`items`, adding the time spent waiting for each one (starting the iterator, e.g. a
    DataLoader's workers, included) to `DATA_WAIT[loop]`."""
    t0 = time.perf_counter()
    it = iter(items)
    for item in it:
        DATA_WAIT[loop] = DATA_WAIT.get(loop, 0.0) + time.perf_counter() - t0
        yield item
        t0 = time.perf_counter()
    DATA_WAIT[loop] = DATA_WAIT.get(loop, 0.0) + time.perf_counter() - t0
