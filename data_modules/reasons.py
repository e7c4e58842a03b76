"""Short, one-line reasons for a bad sample or file: what a bad-sample report and an error say."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def short_repr(value: object, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters (a value read from a file may be huge or nested
    deeper than repr can go)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # ValueError: an int past the digits limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_error(err: BaseException) -> str:
    """Why JSON text did not load, in a few words (RecursionError and the int-digits limit say
    little of the JSON by themselves)."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start})"
    if "integer string conversion" in str(err):
        return "an integer with too many digits"
    return one_line(err)


def path_reason(err: OSError | ValueError, path: Path) -> str:
    """The reason for a sample whose file `path` the OS refused: an id or name that cannot be a
    file name ("invalid id") or a file that cannot be read ("unreadable file")."""
    bad_name = not isinstance(err, OSError) or err.errno == errno.ENAMETOOLONG
    kind = "invalid id" if bad_name else "unreadable file"
    return f"{kind}: {os_reason(err)}: {path!s}"


def os_reason(err: BaseException) -> str:
    """What went wrong with a path, without repeating the (possibly very long) path."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror  # "File name too long"
    return one_line(err)  # "embedded null byte"


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_a_file(path: Path) -> str | None:
    """What `path` is when it exists (links followed) but is no regular file ("a directory", "a
    FIFO (named pipe)", "a symlink loop", ...); None for a regular file or nothing at all.

    Only `stat` is called: a FIFO is never opened (opening one for reading waits for a writer).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return "a symlink loop" if err.errno == errno.ELOOP else None
    except ValueError:  # a NUL byte: no file by that name
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
