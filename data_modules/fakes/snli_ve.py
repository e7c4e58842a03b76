"""A tiny fake SNLI-VE in its real layout, optionally with the dirt the reader must handle.

`write_fake_snli_ve(root, dirty=...)` writes `snli_ve_{train,dev,test}.jsonl` and
`flickr30k_images/<id>.jpg`, plus `<root>-outside/` when dirty.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..snli_ve import SNLI_VE_LABELS
from .common import FakeDataset, jpeg_bytes, outside_dir, staged_dir, truncated

_FILES = {"train": "snli_ve_train.jsonl", "val": "snli_ve_dev.jsonl", "test": "snli_ve_test.jsonl"}
# Hypothesis words by label: the text alone predicts the class (a smoke run can learn).
_CUES = {"entailment": "indeed", "neutral": "perhaps", "contradiction": "never"}
_WORDS = "a dog man woman child runs sits plays outside inside near the street water".split()


def _id_fields(image_id: str, variant: int) -> dict[str, Any]:
    """The image id under one of the distributions' keys, cycling through the variants."""
    return [
        {"Flikr30kID": f"{image_id}.jpg"},  # [sic], with the suffix
        {"Flickr30K_ID": image_id},  # without suffix
        {"Flickr30K_ID": int(image_id)},  # bare digits
        {"Flikr30kID": image_id},
    ][variant % 4]


def write_fake_snli_ve(
    root: str | Path,
    *,
    dirty: bool = True,
    images: tuple[int, int, int] = (4, 2, 2),
    seed: int = 0,
) -> FakeDataset:
    """Write a fake SNLI-VE at `root` (must not exist or be empty); return what to expect.

    Clean rows: `images` = Flickr30k images per split (train, dev, test), three hypotheses each
    (one per label, so samples share images), the image id under each key variant in turn, a
    premise (`sentence1`) that must never reach the model. `dirty=True` adds: gold labels `-`
    and "", an unknown label, a malformed JSON line, a JSON array line, a row without image id,
    a missing image, a truncated image shared by two hypotheses, an image id escaping the root,
    a missing and a null `sentence2`, an empty `sentence2` (kept), a duplicate `pairID`, a row
    without `pairID` (kept under `<file>:<line>`) and a blank line in train; a `-` label in dev;
    a missing image in test.
    """
    root = Path(root)
    rng = random.Random(seed)
    fake = FakeDataset(root=root, kept={"train": [], "val": [], "test": []})
    lines: dict[str, list[str]] = {split: [] for split in _FILES}
    with staged_dir(root) as tmp:
        image_dir = tmp / "flickr30k_images"
        image_dir.mkdir()
        serial = iter(range(10_000))

        def row(split: str, image_id: str, label: str, **extra: Any) -> dict[str, Any]:
            n = next(serial)
            words = " ".join(rng.sample(_WORDS, 4))
            content: dict[str, Any] = {
                **_id_fields(image_id, n),
                "captionID": f"{image_id}.jpg#{n % 5}",
                "pairID": f"{image_id}.jpg#{n}r1{label[:1] or 'x'}",
                "sentence1": f"PREMISE caption {n} of image {image_id}",
                "sentence2": f"{words} {_CUES.get(label, 'so')}",
                "gold_label": label,
                "annotator_labels": [label],
            }
            content.update(extra)
            lines[split].append(json.dumps({k: v for k, v in content.items() if v is not None}))
            return content

        def good(split: str, image_id: str, label: str, **extra: Any) -> None:
            content = row(split, image_id, label, **extra)
            sample_id = content.get("pairID") or f"{_FILES[split]}:{len(lines[split])}"
            fake.kept[split].append(sample_id)
            fake.texts[sample_id] = content["sentence2"]
            fake.labels[sample_id] = SNLI_VE_LABELS.index(label)

        def refused(split: str, image_id: str, label: str, kind: str, **extra: Any) -> None:
            content = row(split, image_id, label, **extra)
            fake.dropped.add((split, content["pairID"], kind))

        next_image = iter(range(1_000_000_000, 2_000_000_000, 7919))
        for split, count in zip(_FILES, images):
            for _ in range(count):
                image_id = str(next(next_image))
                (image_dir / f"{image_id}.jpg").write_bytes(
                    jpeg_bytes(64, 48, seed=int(image_id) % 100_003 + seed)
                )
                for label in SNLI_VE_LABELS:
                    good(split, image_id, label)
        if dirty:
            _add_dirt(root, image_dir, lines, fake, next_image, good, refused)
        for split, name in _FILES.items():
            (tmp / name).write_text("\n".join(lines[split]) + "\n", "utf-8")
    return fake


def _add_dirt(root, image_dir, lines, fake, next_image, good, refused) -> None:
    """The dirt, added to `lines` (see `write_fake_snli_ve`)."""
    outside = outside_dir(root)
    outside.mkdir(parents=True, exist_ok=True)
    fake.outside = outside
    shared = str(next(next_image))  # an image of good rows, reused below
    (image_dir / f"{shared}.jpg").write_bytes(jpeg_bytes(64, 48, seed=1))
    good("train", shared, "neutral")
    refused("train", shared, "-", "no gold label")
    refused("train", shared, "", "no gold label")
    refused("train", shared, "maybe", "unknown label")
    n = len(lines["train"]) + 1
    lines["train"].append('{"pairID": "broken", "gold_label": "entailment", ')
    fake.dropped.add(("train", f"snli_ve_train.jsonl:{n}", "malformed json row"))
    lines["train"].append(json.dumps(["not", "an", "object"]))
    fake.dropped.add(("train", f"snli_ve_train.jsonl:{n + 1}", "malformed json row"))
    refused(
        "train",
        shared,
        "entailment",
        "malformed json row",
        Flikr30kID=None,
        Flickr30K_ID=None,
    )
    missing = str(next(next_image))
    refused("train", missing, "entailment", "missing image")
    broken = str(next(next_image))
    (image_dir / f"{broken}.jpg").write_bytes(truncated(jpeg_bytes(seed=2)))
    refused("train", broken, "entailment", "unreadable image")
    refused("train", broken, "neutral", "unreadable image")
    (outside / "123.jpg").write_bytes(jpeg_bytes())
    escape = f"../../{outside.name}/123.jpg"
    refused("train", shared, "neutral", "outside dataset root", Flikr30kID=escape)
    refused("train", shared, "contradiction", "missing text", sentence2=None)
    content = dict(json.loads(lines["train"][-1]), pairID="null-sentence2", sentence2=None)
    lines["train"].append(json.dumps(content))  # null stays in the JSON here
    fake.dropped.add(("train", "null-sentence2", "missing text"))
    good("train", shared, "contradiction", sentence2="")
    first = fake.kept["train"][0]
    refused("train", shared, "neutral", "duplicate id", pairID=first)
    lines["train"].append("")  # a blank line: not a sample
    good("train", shared, "entailment", pairID=None)
    refused("val", shared, "-", "no gold label")
    refused("test", str(next(next_image)), "neutral", "missing image")
