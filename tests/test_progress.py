"""Progress bars: quiet in a log (a few lines per stage), live on a terminal."""

import io
import sys

from tsubasa_fast import progress as P


class _Tty(io.StringIO):
    def isatty(self):
        return True


def _redraws(stream, monkeypatch, steps=2000, postfix=False):
    monkeypatch.setattr(sys, "stderr", stream)
    with P.progress_bar(total=steps, desc="stage", unit="x") as bar:
        for i in range(steps):
            bar.update(1)
            if postfix:  # as the synth and training stages report kept pairs / the loss
                bar.set_postfix(kept=i)
                bar.set_description("stage")
    return stream.getvalue().count("\r")


def test_a_log_gets_an_opening_and_a_closing_line_only(monkeypatch):
    log = io.StringIO()  # not a terminal, like a CI log or `make demo | tee`
    assert _redraws(log, monkeypatch) == 2  # the 0/2000 line and the 2000/2000 line
    assert "2000/2000" in log.getvalue()


def test_a_postfix_in_a_log_does_not_redraw(monkeypatch):
    log = io.StringIO()
    assert _redraws(log, monkeypatch, postfix=True) == 2
    assert "kept=1999" in log.getvalue()  # the closing line shows the last postfix


def test_a_terminal_keeps_its_live_bar(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = P.progress_bar(total=3, desc="stage", unit="x", mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert tty.getvalue().count("\r") == 5  # open, three updates, close
    assert bar.mininterval == 0 and P.LOG_INTERVAL_S > 1
