"""Content fingerprints of local weight files and model folders, for the encoders' identity.

A checkpoint or a feature cache records which weights made its features; a file name and size
cannot tell two fine-tunes of one architecture apart. Hashing a 13 GB LLaMA folder at every start
would cost a minute, so a file's fingerprint is the SHA-256 of its size and of three 8 MiB
samples (start, middle, end), the whole file when it is smaller than that: different trained
weights differ everywhere, so the samples tell them apart, at a bounded cost per file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLE_BYTES = 8 * 2**20


def file_fingerprint(path: str | Path, sample_bytes: int = SAMPLE_BYTES) -> str:
    """`sha256:<hex>` of the file's size and its start, middle and end samples (or all of it)."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= 3 * sample_bytes:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
        else:
            for offset in (0, (size - sample_bytes) // 2, size - sample_bytes):
                handle.seek(offset)
                digest.update(handle.read(sample_bytes))
    return f"sha256:{digest.hexdigest()}"


def folder_fingerprint(folder: str | Path, sample_bytes: int = SAMPLE_BYTES) -> str:
    """`sha256:<hex>` over every file below `folder` (relative name and fingerprint), in name
    order; hidden files and folders (`.git`, `.cache`) and `__pycache__` are left out."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        skipped = any(part.startswith(".") or part == "__pycache__" for part in relative.parts)
        if skipped or not path.is_file():
            continue
        digest.update(f"{relative.as_posix()}\0{file_fingerprint(path, sample_bytes)}\0".encode())
    return f"sha256:{digest.hexdigest()}"


def hub_snapshot_commit(repo_id: str, revision: str | None = None) -> str | None:
    """`hub-commit:<hash>` of the locally cached snapshot a hub id (at `revision`, default the
    `main` ref) resolves to, which is what `from_pretrained` loaded; None when it is not cached
    in the standard hub cache. Needs no network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a hub id (e.g. a relative folder that does not exist)
        return None
    if isinstance(found, str) and Path(found).parent.parent.name == "snapshots":
        return f"hub-commit:{Path(found).parent.name}"
    return None
