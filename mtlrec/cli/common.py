"""What every mtlrec CLI shares: one-line errors and a clean exit status."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from absl import app, logging

# Errors a user can act on: printed as one line, exit status 1, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def run(main: Callable[[list[str]], int | None]) -> None:
    """`absl.app.run(main)` with user errors as one line and a hard exit.

    tensorflow-io's S3 filesystem aborts the interpreter at exit ("pure
    virtual method called", status 134) after the work is done, so once
    flushed we leave with `os._exit` and the real status.
    """

    def guarded(argv: list[str]) -> int:
        try:
            return main(argv) or 0
        except USER_ERRORS as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {msg}", file=sys.stderr)
            return 1

    code = 0
    try:
        app.run(guarded)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an internal error: show it, then exit like the rest
        traceback.print_exc()
        code = 1
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
