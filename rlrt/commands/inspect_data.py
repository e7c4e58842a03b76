"""`rlrt inspect-data`: what a dataset copy holds, per split, before any training.

Takes the arguments of `rlrt fit` (`--config` files, `--data.*` overrides) and builds only the
data module: no model is built and no weights are loaded. The model config is optional: given (a
`--config` file with a `model` section, or `--model.*` overrides), it is parsed as `fit` parses it
and the image size is linked from its image encoder; without one, the image size is the data
config's `image_size` (`--data.init_args.image_size`), else the data module's default (224).
Prints, per split: sample count, label histogram, text length statistics (in whitespace-separated
words) and every dropped sample with its reason; warns (on stderr) when a split's entry count
differs from the dataset's standard size, the usual sign of a partial copy. `--json` prints one
JSON object instead: `{"splits": {"<split>": {"count": N, "dropped": M, "reasons": {"<reason>":
n}}}}`, where a reason is the kind before the first colon ("missing image", "unknown label", ...).

The data module must be an image-text DataModule of this project (`dataset(split)`,
`bad_samples`, `class_names`, `expected_split_sizes()`, `source_count(split)`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning import LightningDataModule

from rlrt.engine.lightning_cli import RLRTCLI, instantiate_group, parse_only

SPLITS = ("train", "val", "test")


def reason_kind(reason: str) -> str:
    """The kind of a drop reason: the text before its first colon."""
    return reason.split(":", 1)[0].strip()


def split_summary(datamodule: Any, split: str) -> dict[str, Any]:
    """Counts, label histogram, text lengths and drops of one split (builds it if needed)."""
    records = datamodule.dataset(split).records
    dropped = [b for b in datamodule.bad_samples if b.split == split]
    names = datamodule.class_names
    histogram: Counter[str] = Counter()
    unlabelled = 0
    for rec in records:
        labels = rec.label if isinstance(rec.label, list) else [rec.label]
        histogram.update(names[c] for c in labels)
        unlabelled += not labels
    words = sorted(len(rec.text.split()) for rec in records)
    return {
        "count": len(records),
        "dropped": len(dropped),
        "reasons": dict(Counter(reason_kind(b.reason) for b in dropped).most_common()),
        "labels": {name: histogram[name] for name in names},
        "unlabelled": unlabelled,
        "text_words": _length_stats(words),
        "dropped_samples": [(b.id, b.reason) for b in dropped],
    }


def _length_stats(lengths: list[int]) -> dict[str, float]:
    """min / median / mean / p95 / max of sorted lengths, and how many are 0."""
    if not lengths:
        return {}
    return {
        "min": lengths[0],
        "median": statistics.median(lengths),
        "mean": round(statistics.fmean(lengths), 2),
        "p95": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
        "max": lengths[-1],
        "empty": sum(n == 0 for n in lengths),
    }


def size_warnings(datamodule: Any, splits: tuple[str, ...] = SPLITS) -> list[str]:
    """One line per split whose entry count differs from the dataset's standard size."""
    expected = datamodule.expected_split_sizes()
    limit = getattr(datamodule, "limit_samples", None)
    lines = []
    for split in splits:
        if split not in expected:
            continue
        found = datamodule.source_count(split)
        if found != expected[split]:
            why = (
                f" (limit_samples={limit} stops reading early)"
                if limit is not None
                else "; a partial or modified copy of the dataset? Results on it are not "
                "comparable with published numbers"
            )
            lines.append(
                f"warning: {datamodule.dataset_name} {split}: {found:,} entries in the files, "
                f"the standard split has {expected[split]:,}{why}"
            )
    return lines


def format_summary(datamodule: Any, summaries: dict[str, dict[str, Any]]) -> str:
    """The human-readable report."""
    out = [
        f"{datamodule.dataset_name} at {datamodule.root} ({type(datamodule).__name__}, "
        f"image size {datamodule.image_size})"
    ]
    for split, s in summaries.items():
        out.append(f"\n== {split}: {s['count']:,} samples, {s['dropped']:,} dropped")
        labels = ", ".join(f"{name} {n}" for name, n in s["labels"].items())
        if s["unlabelled"]:
            labels += f", (no label) {s['unlabelled']}"
        out += textwrap.wrap(f"labels: {labels}", 100, subsequent_indent="  ")
        if s["text_words"]:
            stats = ", ".join(f"{k} {v}" for k, v in s["text_words"].items())
            out.append(f"text length in words: {stats}")
        if s["dropped"]:
            reasons = ", ".join(f"{k} {n}" for k, n in s["reasons"].items())
            out += textwrap.wrap(f"dropped by reason: {reasons}", 100, subsequent_indent="  ")
            out += [f"  {sample_id}  {reason}" for sample_id, reason in s["dropped_samples"]]
    return "\n".join(out)


def names_a_model(args: list[str]) -> bool:
    """Whether `args` configure a model: a `--model...` argument, or a `--config` (a file or
    inline YAML) with a top-level `model` key."""
    configs = []
    for i, arg in enumerate(args):
        if arg == "--model" or arg.startswith(("--model.", "--model=")):
            return True
        if arg == "--config" and i + 1 < len(args):
            configs.append(args[i + 1])
        elif arg.startswith("--config="):
            configs.append(arg.split("=", 1)[1])
    for value in configs:
        try:
            path = Path(value)
            text = path.read_text(encoding="utf-8") if path.is_file() else value
            loaded = yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError):
            continue  # the real parser reports it
        if isinstance(loaded, dict) and "model" in loaded:
            return True
    return False


def parse_data_only(args: list[str]) -> Namespace:
    """Parse `--config` files and overrides without the model group (and so without the image
    size link): the data module keeps its own `image_size`."""
    return _DataOnlyCLI(args=args, run=False).config


class _DataOnlyCLI(RLRTCLI):
    """The `fit` parser (trainer and data groups, `seed_everything`) without the model."""

    def add_core_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True)

    def add_arguments_to_parser(self, parser) -> None:
        pass  # the links read or write the model group

    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass  # inspecting data trains nothing: no global seed, and no "No seed found" warning


def run_inspect_data(argv: list[str]) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="rlrt inspect-data",
        description=__doc__.split("\n\n")[1],
        epilog="Every other argument is passed as to `rlrt fit` (--config, --data.*, ...).",
        allow_abbrev=False,
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args, fit_args = parser.parse_known_args(argv)
    config = parse_only(fit_args) if names_a_model(fit_args) else parse_data_only(fit_args)
    datamodule = instantiate_group(config, "data", LightningDataModule)
    if not hasattr(datamodule, "bad_samples"):
        raise ValueError(
            f"{type(datamodule).__name__} is not an image-text DataModule of this project "
            "(no dataset(split) / bad_samples); inspect-data reads those"
        )
    # A missing file or, with on_bad_sample="error", a bad sample raises here; `rlrt` prints it
    # as one line. The data module's "dropped N bad samples" warning is left out: the report
    # below lists every dropped sample.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".* dropped \d+ bad sample")
        summaries = {split: split_summary(datamodule, split) for split in SPLITS}
    size_lines = size_warnings(datamodule)
    if args.json:
        keys = ("count", "dropped", "reasons")
        report = {"splits": {k: {f: s[f] for f in keys} for k, s in summaries.items()}}
        print(json.dumps(report))
    else:
        print(format_summary(datamodule, summaries))
    for line in size_lines:
        print(line, file=sys.stderr)
    return summaries
