"""User errors end in one line on stderr and exit status 2; `--debug` shows the traceback.
A run stopped by SIGTERM ends in one line too, with exit status 143; one stopped by Ctrl-C
(SIGINT) in one line with exit status 130, also when Lightning caught it first.

A user error is one the user can fix: a missing dataset root or model folder, an unknown config
key or a wrong type, a checkpoint that is corrupted or belongs to another config, a run directory
that would be overwritten, a full disk. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException

DEBUG_FLAG = "--debug"
USAGE_ERROR = 2
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM: batch schedulers requeue a job that ends so

# Lines of jsonargparse's union-type reports that repeat what the other lines say.
_PARSE_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "- Expected a <class 'NoneType'>",
    "Given value type:",
    "Given value:",
)
_USER_OS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}

T = TypeVar("T")


def split_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` (anywhere), and whether it was there."""
    kept = [a for a in argv if a != DEBUG_FLAG]
    return kept, len(kept) != len(argv)


def one_line(text: str) -> str:
    """Collapse a message to one line; a worker's re-raised error keeps only its last line."""
    if "Original Traceback" in text:
        text = [line for line in text.splitlines() if line.strip()][-1]
    return " ".join(text.split())


def parse_error_line(message: str, command: str) -> str:
    """jsonargparse's (often multi-line) report as one line, with where to find the options."""
    lines = [line.strip() for line in message.splitlines()]
    kept = [line.removeprefix("- ") for line in lines if line and not line.startswith(_PARSE_NOISE)]
    return f"{' '.join(kept).rstrip('.')}; see `{command} --help` for the accepted options"


def user_error_message(error: BaseException, command: str = "rlrt") -> str | None:
    """The one-line message for a user error, or None when `error` is not one."""
    if isinstance(error, argparse.ArgumentError) or (
        # a class's own check failing as jsonargparse instantiates it: its report of a union
        isinstance(error, ValueError) and str(error).startswith(_PARSE_NOISE[0])
    ):
        return parse_error_line(str(error), command)
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        name = str(error.filename or "")
        shown = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]} ({len(name)} characters)"
        return f"file name too long: {shown}; use a shorter path or file name"
    if isinstance(error, OSError) and error.errno in _USER_OS_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}; free space or fix the permissions, then rerun"
    if isinstance(
        error,
        (
            FileNotFoundError,
            FileExistsError,
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
            ValueError,
            MisconfigurationException,
        ),
    ):
        return one_line(str(error)) or type(error).__name__
    return None


def run_reporting_errors(command: Callable[[list[str]], T], argv: list[str], name: str) -> T:
    """Run `command(argv)`; a user error prints `rlrt: error: <message>` and exits with 2.

    `--debug` anywhere in `argv` is removed before `command` sees it and lets every exception
    through with its traceback.
    """
    argv, debug = split_debug_flag(argv)
    try:
        return command(argv)
    except SIGTERMException as stop:  # a SystemExit with status 0: make it say and fail
        print(terminated_message(stop), file=sys.stderr)
        raise SystemExit(TERMINATED) from None
    except (KeyboardInterrupt, SystemExit) as stop:  # after SIGTERMException, a SystemExit
        interrupt = interrupt_of(stop)
        if debug or interrupt is None:
            raise
        print(interrupted_message(interrupt), file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except Exception as error:
        message = None if debug else user_error_message(error, name)
        if message is None:
            raise
        print(f"rlrt: error: {message}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def interrupt_of(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind `error`: the `KeyboardInterrupt` itself, or the one Lightning turned into
    `sys.exit(1)` after its graceful shutdown (the `SystemExit` raised while handling it)."""
    if isinstance(error, KeyboardInterrupt):
        return error
    if isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt):
        return error.__context__
    return None


def interrupted_message(interrupt: BaseException) -> str:
    """The one line for Ctrl-C, with what to do next when the command said (`rlrt_hint`)."""
    hint = getattr(interrupt, "rlrt_hint", None)
    return f"rlrt: interrupted (Ctrl-C); {hint}" if hint else "rlrt: interrupted (Ctrl-C)"


def terminated_message(stop: BaseException) -> str:
    """The one line for a run stopped by SIGTERM: where its checkpoint is, if one was saved."""
    checkpoint = getattr(stop, "rlrt_checkpoint", None)
    failed = getattr(stop, "rlrt_checkpoint_error", None)
    if failed:
        return f"rlrt: terminated by SIGTERM; saving the checkpoint failed: {failed}"
    if checkpoint:
        step = getattr(stop, "rlrt_step", None)
        at = f" at step {step}" if step is not None else ""
        return (
            f"rlrt: terminated by SIGTERM; saved checkpoint {checkpoint}{at}: resume with "
            "`--ckpt_path last`"
        )
    return "rlrt: terminated by SIGTERM; no checkpoint was saved (not training, or not yet)"


def command_name(argv: list[str], commands: Iterable[str]) -> str:
    """`rlrt <subcommand>` for messages, or `rlrt` when argv names none of `commands`."""
    return f"rlrt {argv[0]}" if argv[:1] and argv[0] in set(commands) else "rlrt"
