"""What every mtlrec CLI shares: one-line errors and a clean exit status."""

from __future__ import annotations

import math
import os
import sys
import traceback
from collections.abc import Callable

from absl import app, flags, logging

# Errors a user can act on: printed as one line, exit status 1, no traceback.
# OSError covers unwritable, missing and full locations ("Permission denied:
# 'runs/x'"); TensorFlow's own file errors are matched by name below so this
# module does not import TensorFlow.
USER_ERRORS = (ValueError, OSError, KeyError)
_TF_USER_ERRORS = ("PermissionDeniedError", "NotFoundError", "AlreadyExistsError", "ResourceExhaustedError",
                   "DataLossError", "FailedPreconditionError")


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    if type(e).__name__ in _TF_USER_ERRORS and hasattr(e, "message"):
        return str(e.message).splitlines()[0]
    return str(e)


def check_finite_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """A float flag (or list of numbers) given as nan/inf is refused: no
    setting of mtlrec means anything non-finite, and NaN passes every bound."""
    for name, flag in flag_values._flags().items():
        if not flag.present:
            continue
        values = flag.value if isinstance(flag.value, list) else [flag.value]
        for v in values:
            if not isinstance(v, (float, str)) or isinstance(v, str) and not isinstance(flag.value, list):
                continue
            try:  # list items: "0.5" or "task=0.5"
                number = float(v) if isinstance(v, float) else float(v.split("=", 1)[-1])
            except ValueError:
                continue
            if not math.isfinite(number):
                raise ValueError(f"--{name}={flag.serialize().split('=', 1)[-1]}: expected finite numbers")


def run(main: Callable[[list[str]], int | None]) -> None:
    """`absl.app.run(main)` with user errors as one line and a hard exit.

    tensorflow-io's S3 filesystem aborts the interpreter at exit ("pure
    virtual method called", status 134) after the work is done, so once
    flushed we leave with `os._exit` and the real status.
    """

    def guarded(argv: list[str]) -> int:
        try:
            check_finite_flags()
            return main(argv) or 0
        except USER_ERRORS as e:
            print(f"error: {_message(e)}", file=sys.stderr)
            return 1
        except Exception as e:
            if type(e).__name__ not in _TF_USER_ERRORS:
                raise
            print(f"error: {_message(e)}", file=sys.stderr)
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
