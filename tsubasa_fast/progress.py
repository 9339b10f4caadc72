"""Progress bars for long work: a live bar on a terminal, a few lines in a log.

tqdm redraws its bar many times a second; when stderr is a file or a pipe (CI logs,
``make demo | tee``) every redraw becomes a line. Off a terminal the bar here refreshes at
most once every ``LOG_INTERVAL_S`` seconds, so a stage writes its first line, one line a
minute while it runs, and its closing line.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 60.0


def _on_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class _LogBar(tqdm):
    """Off a terminal a postfix update waits for the next timed refresh instead of forcing a
    redraw (``set_postfix`` refreshes by default, one log line per call)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)


def progress_bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "it",
             disable: bool = False, **kwargs):
    """A tqdm bar on stderr that is quiet in logs (see the module docstring)."""
    bar = tqdm
    if not _on_terminal(sys.stderr):
        bar = _LogBar
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
        # tqdm otherwise adapts miniters to the first rate and never reconsiders the interval
        kwargs.setdefault("miniters", 1)
        kwargs.setdefault("dynamic_ncols", False)
        kwargs.setdefault("ncols", 100)
    return bar(iterable, desc=desc, total=total, unit=unit, disable=disable, file=sys.stderr, **kwargs)
