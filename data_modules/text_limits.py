"""How much of a sample's text is kept: the readers cut a text at `MAX_TEXT_CHARS` characters.

A text encoder reads at most its `max_length` tokens of a text (128 by default, a few thousand
at most), and a token covers a few characters: 100,000 characters hold more tokens than any
encoder here reads (unless its tokens average over 100,000 / max_length characters, 24 at
max_length 4096), so the cut changes no feature. It keeps a pathological text (a 100 MB field)
from being held for the whole run, copied into DataLoader workers, hashed into the cache's
fingerprint and tokenised whole at every batch. The file's line itself is parsed once, in
memory (a JSONL line about twice its size while it is parsed).
"""

from __future__ import annotations

MAX_TEXT_CHARS = 100_000


def cut_text(text: str) -> str:
    """`text` up to `MAX_TEXT_CHARS` characters (a copy of that prefix when longer)."""
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS]
