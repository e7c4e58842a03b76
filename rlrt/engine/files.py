"""Small file helpers: writes that never leave a half-written file looking valid."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str | bytes, *, overwrite: bool = True) -> Path:
    """Write `text` (or bytes) to a temporary file beside `path`, then rename it into place.

    With `overwrite=False`, an existing `path` is left alone and `FileExistsError` raised (checked
    when the file is put in place, so a file that appeared meanwhile is not replaced either).
    A failed write (a full disk) leaves an existing `path` as it was, removes the temporary file
    and raises an `OSError` naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        if overwrite:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno is not None and error.filename is None:  # a full disk names no file
            raise OSError(error.errno, error.strerror or str(error), str(path)) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _place_new(tmp: str, path: Path) -> None:
    """Rename `tmp` to `path` unless `path` exists (a hard link fails on an existing name)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists") from None
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """`atomic_write_text` for binary content (images, ...)."""
    return atomic_write_text(path, data)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as JSON, atomically. JSON has no NaN or infinity: those floats (a metric
    without a value, such as `cca_corr` on a split with fewer samples than dimensions) are null."""
    text = json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
