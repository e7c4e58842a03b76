"""Sizes as people read them."""

from __future__ import annotations


def human_bytes(size: float) -> str:
    """`size` bytes in binary units: `812 B`, `3.4 MiB`, `1.2 GiB`."""
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")
