"""mtlrec's log line format (mtlrec.cli.common.LineFormat)."""

import logging
import re

from mtlrec.cli.common import LOG_LINE, LineFormat


def _record(level, message, args=(), exc_info=None):
    return logging.LogRecord("absl", level, "/x/mtlrec/training/loop.py", 59, message, args, exc_info)


def test_a_line_is_the_time_then_the_message_with_its_level_named_when_it_matters():
    fmt = LineFormat()
    info = fmt.format(_record(logging.INFO, "epoch %d valid: click_auc=%.4f", (3, 0.7123)))
    assert re.fullmatch(r"\d\d:\d\d:\d\d epoch 3 valid: click_auc=0\.7123", info) and LOG_LINE.match(info)
    assert fmt.format(_record(logging.WARNING, "slow")).split(" ", 1)[1] == "warning: slow"
    assert fmt.format(_record(logging.ERROR, "bad")).split(" ", 1)[1] == "error: bad"
    assert fmt.format(_record(logging.CRITICAL, "gone")).split(" ", 1)[1] == "fatal: gone"
    assert "loop.py" not in info and "]" not in info  # no source file, no thread id


def test_an_exception_keeps_its_traceback():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        text = LineFormat().format(_record(logging.ERROR, "failed", exc_info=sys.exc_info()))
    lines = text.splitlines()
    assert lines[0].endswith("error: failed") and "Traceback" in lines[1] and lines[-1] == "ValueError: boom"
