"""The cache folder's write lock: `<cache>/.rlrt-cache.lock`, held (`flock`, exclusive) by the
`rlrt cache` writing the folder, with `{"pid": N}` of that process while held and `{}` after."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from rlrt.cache.format import CacheBusyError

LOCK_NAME = ".rlrt-cache.lock"


def lock_holder(cache_dir: Path) -> str | None:
    """`pid N` (or `unknown pid`) of the `rlrt cache` writing `cache_dir`, or None if none is."""
    lock = Path(cache_dir) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_pid(fd) or "unknown pid"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_pid(fd: int) -> str | None:
    """`pid N` as the lock file's holder wrote it, or None."""
    found = re.search(rb"\d+", os.pread(fd, 256, 0))
    return f"pid {int(found.group())}" if found else None


def _rewrite(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


@contextlib.contextmanager
def cache_write_lock(cache_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of `cache_dir` (created if needed) while the block runs; another
    holder makes this raise `CacheBusyError` at once."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = cache_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder_pid(fd) or "another process"
            raise CacheBusyError(
                f"feature cache folder {cache_dir} is being written by another `rlrt cache` "
                f"({who}); wait for it to finish or use another folder"
            ) from None
        _rewrite(fd, json.dumps({"pid": os.getpid()}))
        try:
            yield
        finally:
            _rewrite(fd, "{}")  # JSON like the rest of the folder, and no stale pid
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
