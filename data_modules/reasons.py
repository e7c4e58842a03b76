"""Short, one-line reasons for a bad sample or file: what a bad-sample report and an error say."""

from __future__ import annotations

import errno
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
