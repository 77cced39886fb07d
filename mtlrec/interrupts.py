"""A stop signal that cannot be lost.

Python runs a signal handler between two bytecodes of the main thread, and
the exception it raises surfaces wherever that thread is. Now and then
that is a place which drops it (a TensorFlow call that turns pending
errors into its own status, a finalizer): a SIGTERM to mtlrec-train was
seen to go unanswered that way, the run training on to the end. So the
CLI's handlers also note the signal here, and long loops call
`raise_pending()` at their safe points, which raises it (again) there.
"""

from __future__ import annotations

_pending: type[BaseException] | None = None


def note(exception: type[BaseException]) -> None:
    """Records that `exception` (KeyboardInterrupt, or the CLI's Terminated) was raised by a signal."""
    global _pending
    _pending = exception


def raise_pending() -> None:
    """Raises the noted interrupt, if any: call where stopping is safe."""
    if _pending is not None:
        raise _pending()


def clear() -> None:
    global _pending
    _pending = None
