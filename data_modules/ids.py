"""When two sample ids are the same: equal after Unicode normalisation (NFC).

"café" typed on one machine (NFC: `caf\\xe9`) and written by another (NFD: `cafe\\u0301`) are
different strings that look identical in every report, spreadsheet and file browser, and some
file systems (macOS) store both as one name. Two ids of a dataset that differ only so are
duplicates: the second is refused as a bad sample, and the reason names both in `ascii()` form
so that the difference shows. Kept ids stay as written (never normalised), so that the cache's
`ids.json`, predictions and reports match the user's files byte for byte.
"""

from __future__ import annotations

import unicodedata


def id_key(sample_id: str) -> str:
    """What two ids are compared by: their NFC form."""
    return unicodedata.normalize("NFC", sample_id)


def same_as(sample_id: str, first: str) -> str:
    """ "" for an exact repeat of `first`; for one that differs only by normalisation, the words
    naming both (" ('cafe\\u0301' is 'caf\\xe9' after Unicode normalisation, NFC)")."""
    if sample_id == first:
        return ""
    return f" ({ascii(sample_id)} is {ascii(first)} after Unicode normalisation, NFC)"
