"""What every mtlrec CLI shares: one-line errors and a clean exit status."""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from absl import app, flags, logging

from mtlrec import interrupts
from mtlrec.config import did_you_mean

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
    for name in flag_values:
        flag = flag_values[name]
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


_HELP_ARGS = ("--help", "-h", "--helpshort", "-?", "--help=true")
COMMON_HELP = """\
Every command also takes:
  --flagfile=FILE: read flags from FILE, one per line (a --flagfile inside it, like
    experiments/*.flags' --flagfile=experiments/base.flags, is found from the current
    directory or else from the repository root the FILE is in, so any folder works);
    later flags override earlier ones.
  -v 1 (--verbosity=1): show TensorFlow's own log lines, hidden by default.
  --helpfull: every flag, including absl's and TensorFlow's."""


def command_name(main: Callable) -> str:
    module = main.__module__
    if module == "__main__":  # python -m mtlrec.cli.X
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec else module
    return "mtlrec-" + module.rsplit(".", 1)[-1]


def help_text(main: Callable, flag_modules: tuple[str, ...] = ()) -> str:
    """USAGE, the command's docstring, its own flags with their help, and the common flags."""
    doc = (sys.modules[main.__module__].__doc__ or "").strip()
    parts = [f"USAGE: {command_name(main)} [flags]", "", doc, ""]
    for module in (main.__module__, *flag_modules):
        owner = command_name(main) if module == main.__module__ else "mtlrec-" + module.rsplit(".", 1)[-1]
        lines = flags.FLAGS.module_help(module).strip().splitlines()[1:]  # drops the module's name
        parts += [f"Flags of {owner}:", *lines, ""]
    parts.append(COMMON_HELP)
    return "\n".join(parts) + "\n"


def quiet_tensorflow(verbosity: int) -> None:
    """Hide TensorFlow's C++ and Python log lines (CUDA factories, oneDNN,
    rendezvous, saver chatter) unless -v 1 or more; must run before
    TensorFlow is imported for the C++ part."""
    import logging as std_logging

    if verbosity >= 1:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    logging.get_absl_handler().addFilter(_NotTheirInfo())
    logging.get_absl_handler().setFormatter(LineFormat())


class LineFormat:
    """mtlrec's log line, `HH:MM:SS message` (`warning: ` or `error: ` before
    the message at those levels), in place of absl's
    `I1203 17:00:21.891188 139735303392128 train.py:146] ` prefix: a thread
    id and a source line say nothing to a user. -v 1 brings absl's format
    back along with TensorFlow's own lines."""

    LEVELS = {30: "warning: ", 40: "error: ", 50: "fatal: "}

    def format(self, record) -> str:
        import time

        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        text = f"{stamp} {self.LEVELS.get(min(record.levelno // 10 * 10, 50), '')}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return text


LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")  # a line in LineFormat


class _NotTheirInfo:
    """Drops INFO lines that TensorFlow and Keras log through absl (the saver's
    "Sharding callback duration", "Assets written to ...", ...); warnings and
    mtlrec's own lines pass."""

    _THEIRS = (f"{os.sep}tensorflow", f"{os.sep}keras{os.sep}", f"{os.sep}tf_keras{os.sep}")

    def filter(self, record) -> bool:
        return record.levelno >= 30 or not any(part in record.pathname for part in self._THEIRS)


_FLAGFILE = ("--flagfile=", "-flagfile=")


def expand_flagfiles(argv: list[str], _seen: tuple[str, ...] = ()) -> list[str]:
    """argv with every --flagfile=FILE replaced by FILE's flags, nested ones
    included. A relative path is read from the current directory as absl
    would, else from the folders above the file that names it (a
    repository's `experiments/mmoe.flags` names `experiments/base.flags`,
    relative to the repository root), so a flagfile works from any folder."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":  # what follows is another command's (mtlrec-launch passes it on as it is)
            return out + argv[i:]
        prefix = next((p for p in _FLAGFILE if arg.startswith(p)), None)
        if prefix is None:
            out.append(arg)
            continue
        path = _find_flagfile(arg[len(prefix):], _seen[-1] if _seen else None)
        if path in _seen:
            raise ValueError(f"--flagfile={arg[len(prefix):]}: includes itself (through {' -> '.join(_seen)})")
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        flags_there = [line for line in lines if line and not line.startswith(("#", "//"))]
        for line in flags_there:
            if not line.startswith("-"):
                raise ValueError(f"{path}: {line!r} is not a flag (expected one --name=value per line)")
        out += expand_flagfiles(flags_there, (*_seen, path))
    return out


def _find_flagfile(name: str, including: str | None) -> str:
    name = os.path.expanduser(name)
    tried = [name]
    if not os.path.isabs(name) and including is not None:
        tried += [str(folder / name) for folder in Path(including).resolve().parents]
    for path in tried:
        if os.path.isfile(path):
            return path
    where = f" (named in {including}; looked in the current directory and the folders above it)" if including else ""
    raise ValueError(f"--flagfile={name}: no such file{where}")


def _flag_error(e: Exception) -> str:
    """absl's flag parsing errors as mtlrec's one line."""
    text = str(e).removeprefix("ERROR:: ")
    missing = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value other than None", text)
    if missing:
        return f"--{missing.group(1)} is required (see --help)"
    unknown = re.match(r"Unknown command line flag '([^']+)'", text)
    if unknown:
        name = unknown.group(1)
        known = [n for n in flags.FLAGS if len(n) > 1]
        return f"unknown flag --{name}{did_you_mean(name, known, prefix='--')} (see --help)"
    return re.sub(r"^flag (--\w+=[^:]*): ", r"\1: ", text)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parse, flagfiles expanded first and its errors rewritten as one
    `error:` line (exit status 1)."""
    try:
        return flags.FLAGS([argv[0], *expand_flagfiles(argv[1:])])
    except (flags.Error, ValueError, OSError) as e:
        print(f"error: {_flag_error(e) if isinstance(e, flags.Error) else _message(e)}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, as KeyboardInterrupt is by
    SIGINT, so `finally` clean-ups run (prepare's staging folder, temporary
    files) before the command exits 143."""


def _raise_terminated(signum, frame) -> None:
    interrupts.note(Terminated)  # raised again at the next safe point should this one be lost
    raise Terminated()


def _raise_interrupt(signum, frame) -> None:
    interrupts.note(KeyboardInterrupt)
    raise KeyboardInterrupt()


# What an interrupted command leaves, by command; "rerun ..." says what to do.
INTERRUPTED = {
    "mtlrec-prepare": "nothing was written at --output (the staging folder was removed); rerun the same command "
                      "to prepare it",
    "mtlrec-train": "the checkpoint of the last finished epoch is kept in --model_dir; rerun the same command "
                    "to resume",
    "mtlrec-predict": "--output was not written; rerun the same command to score",
    "mtlrec-tune": "finished trials are kept in --dir; rerun the same command to resume the search",
    "mtlrec-bench": "finished runs are kept in --out; rerun the same command to resume",
    "mtlrec-launch": "every worker was stopped; rerun the same command to resume from the last checkpoint",
}
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def interrupted_line(command: str, sig: int) -> str:
    kept = INTERRUPTED.get(command, "nothing was written; rerun the same command")
    return f"{command}: interrupted by {signal.Signals(sig).name}; {kept}"


def run(main: Callable[[list[str]], int | None], flag_modules: tuple[str, ...] = ()) -> None:
    """`absl.app.run(main)` with a real --help, quiet TensorFlow, user errors
    as one line and a hard exit.

    `flag_modules`: other modules whose flags the command takes (mtlrec-tune
    takes mtlrec-train's). tensorflow-io's S3 filesystem aborts the
    interpreter at exit ("pure virtual method called", status 134) after the
    work is done, so once flushed we leave with `os._exit` and the real status.
    """
    if any(arg in _HELP_ARGS for arg in sys.argv[1:]):
        sys.stdout.write(help_text(main, flag_modules))
        sys.stdout.flush()
        os._exit(0)

    def guarded(argv: list[str]) -> int:
        try:
            quiet_tensorflow(flags.FLAGS.verbosity)
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
    signal.signal(signal.SIGTERM, _raise_terminated)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT was left ignored
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        app.run(guarded, flags_parser=parse_flags)
    except (KeyboardInterrupt, Terminated) as e:
        # One line, after the clean-ups below the raise have run; a second
        # signal while it is printed must not turn it into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
        print(interrupted_line(command_name(main), sig), file=sys.stderr)
        code = EXIT_SIGTERM if sig == signal.SIGTERM else EXIT_SIGINT
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an internal error: show it, then exit like the rest
        traceback.print_exc()
        code = 1
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
