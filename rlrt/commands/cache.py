"""`rlrt cache`: run the frozen encoders once over the splits and store the pooled Features.

Same `--config` / `--data.*` / `--model.*` / `--trainer.*` arguments as `fit`; the cache goes to
`--data.init_args.feature_cache DIR` (or `--cache_dir DIR`). Runs through `trainer.predict`, so
`--trainer.strategy ddp --trainer.devices N` shards the samples across processes; every process
writes its rows into the same memory-mapped files and the global-rank-0 process writes the
manifests. A killed build resumes where it stopped: rows are flagged done only once flushed, and a
rerun skips them without decoding or encoding them again.

The global-rank-0 process holds an exclusive lock on the cache folder for the whole command: a
second `rlrt cache` into the same folder refuses at once. A split found complete is opened (the
cheap checks of `SplitCacheReader`); `--verify` checks every row of every split it names.

`--storage_dtype int8` stores the features in 8 bits with one scale per feature vector (about
half the disk of float16, see `rlrt.cache.format`); readers follow the cache's manifest. Before
encoding anything the command estimates the bytes still to write and refuses, in one line, a
cache that would not fit on its disk; nothing is left behind then. Stopped by Ctrl-C, it says so
in one line (exit status 130); the same command again resumes the build. A destination that is
a file, or a folder it may not write to, is refused in one line naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from rlrt.cache.builder import (
    SPLITS,
    FeatureExtractor,
    RowWriter,
    SplitJob,
    build_dummy,
    build_splits,
    claim,
    global_rank,
    is_complete,
    shapes_of,
)
from rlrt.cache.content import cache_identity
from rlrt.cache.format import (
    CONTENT_FIELD,
    FORMAT_VERSION,
    STORAGE_DTYPES,
    CacheCorruptError,
    CacheSpaceError,
)
from rlrt.cache.lock import LOCK_NAME, cache_write_lock
from rlrt.cache.reader import SplitCacheReader, verify_split
from rlrt.cache.sources import split_sources
from rlrt.cache.space import DUMMY_COUNT, check_disk_space, count_split, folder_size
from rlrt.engine.errors import interrupt_of
from rlrt.engine.lightning_cli import RLRTCLI, parse_only


@dataclass
class CacheBuildReport:
    """What `rlrt cache` did: the cache folder, and for each split it encoded (not the ones found
    complete) the samples and the seconds spent reading, encoding and writing them (the one pass
    over all splits apportioned by batch; its set-up falls to the first split's first batch). The
    seconds exclude building the CLI, loading the encoders and the dummy inputs, which happen once
    per command."""

    folder: Path
    samples: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_cache(argv: list[str]) -> CacheBuildReport:
    """Entry point of `rlrt cache`."""
    parser = argparse.ArgumentParser(
        prog="rlrt cache",
        description=__doc__,
        epilog="All other arguments are those of `rlrt fit` (--config, --data.*, --model.*, ...).",
    )
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits")
    parser.add_argument("--cache_dir", default=None, help="overrides data.feature_cache")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the data's")
    parser.add_argument(
        "--storage_dtype",
        choices=list(STORAGE_DTYPES),
        default="float16",
        help="how features are stored: float16, or int8 with a scale per feature vector (about "
        "half the disk; each value off by at most half its vector's step max|x|/127)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a cache built for another config, or a damaged one",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every row of every split named (and the dummy inputs): finite values, "
        "index ranges, shapes; the first bad file and row ends the command",
    )
    args, rest = parser.parse_known_args(argv)

    configured = parse_only(rest).data.init_args.get("feature_cache")
    cache_dir = args.cache_dir or configured
    if not cache_dir:
        raise ValueError(
            "rlrt cache needs a destination: --data.init_args.feature_cache DIR (or --cache_dir)"
        )
    cache_dir = Path(cache_dir)
    _refuse_file_in_the_way(cache_dir)
    # one writer per folder: a second `rlrt cache` refuses before loading anything (the other
    # ranks of a distributed run are this command's own processes, they take no lock)
    created = _missing_folders(cache_dir)  # what the lock creates: removed if refused for space
    had_lock_file = (cache_dir / LOCK_NAME).exists()
    lock = cache_write_lock(cache_dir) if global_rank() == 0 else contextlib.nullcontext()
    try:
        with lock:
            return _build_cache(args, rest, cache_dir)
    except CacheSpaceError:
        # refused before any work: leave the disk as it was (the lock file only if this command
        # created it; a concurrent writer would have been refused by the lock meanwhile)
        if global_rank() == 0:
            if not had_lock_file:
                (cache_dir / LOCK_NAME).unlink(missing_ok=True)
            for folder in created:
                with contextlib.suppress(OSError):  # not empty: something else wrote there
                    folder.rmdir()
        raise
    except OSError as error:
        if error.errno in READ_ONLY_ERRNOS and _inside(error.filename, cache_dir):
            raise PermissionError(
                f"feature cache folder {cache_dir} is not writable ({error.strerror}: "
                f"{error.filename}); make it writable or give another folder as "
                f"{DESTINATION_OPTIONS}"
            ) from error
        raise
    except (KeyboardInterrupt, SystemExit) as stop:
        interrupt = interrupt_of(stop)
        if interrupt is not None:  # rows are flagged done only once flushed; no manifest yet
            interrupt.rlrt_hint = (
                f"the feature cache {cache_dir} is not complete; run the same command again to "
                "finish it (the rows already written are kept)"
            )
        raise


DESTINATION_OPTIONS = "--data.init_args.feature_cache (or --cache_dir)"
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


def _refuse_file_in_the_way(cache_dir: Path) -> None:
    """One line when `cache_dir`, or a folder above it, is an existing file (nothing touched)."""
    for path in (cache_dir, *cache_dir.parents):
        if path.exists() and not path.is_dir():
            where = "is" if path == cache_dir else f"lies under {path}, which is"
            raise NotADirectoryError(
                f"feature cache folder {cache_dir} {where} a file, not a folder; give a folder "
                f"(created if missing) as {DESTINATION_OPTIONS}"
            )


def _inside(filename: object, folder: Path) -> bool:
    """Whether the file an OS error names is `folder` or lies inside it."""
    if not filename:
        return False
    path = Path(os.fsdecode(filename)).absolute()
    return path == folder.absolute() or folder.absolute() in path.parents


def _missing_folders(path: Path) -> list[Path]:
    """`path` and its parents that do not exist yet, innermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _build_cache(args: argparse.Namespace, rest: list[str], cache_dir: Path) -> CacheBuildReport:
    cli = RLRTCLI(
        args=[*rest, "--data.init_args.feature_cache=null", "--trainer.logger=false"],
        run=False,
        save_config_callback=None,
    )
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    writer = RowWriter()
    trainer.callbacks.append(writer)
    extractor = FeatureExtractor(model.image_encoder, model.text_encoder)
    # the weights load straight onto the device the build runs on (a 7B text model is not put
    # on the CPU first): the shapes probe and the dummy rows run there too
    extractor.to(trainer.strategy.root_device)
    shapes = shapes_of(model.image_encoder, model.text_encoder)
    encoders = {
        "format_version": FORMAT_VERSION,
        "dtype": args.storage_dtype,
        "encoders": model.encoder_identity(),
    }
    datamodule.prepare_data()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    counts = {split: count_split(datamodule.dataset(split).records) for split in splits}
    plan = {"dummy": DUMMY_COUNT, **counts}
    check_disk_space(cache_dir, plan, shapes, args.storage_dtype, args.overwrite)
    built = set()  # folders encoded by this command (the others were checked by `claim`)
    if global_rank() == 0 and claim(cache_dir / "dummy", encoders, args.overwrite, args.verify):
        built.add("dummy")
        build_dummy(cache_dir / "dummy", model.image_encoder, model.text_encoder, shapes, encoders)
    batch_size = args.batch_size or getattr(datamodule, "eval_batch_size", 32)
    report = CacheBuildReport(cache_dir)
    jobs = []
    for split in splits:
        sources = split_sources(datamodule, split)
        build = {
            **encoders,
            **cache_identity(datamodule, split),
            CONTENT_FIELD: sources.content_sha256,
            "root": str(datamodule.root),
            "token_pooling": {
                "image_tokens": shapes.image_tokens,
                "text_tokens": shapes.text_tokens,
            },
        }
        if global_rank() == 0:
            needed = claim(
                cache_dir / split, build, args.overwrite, args.verify, sources.image_stats
            )
        else:  # the same decision, without touching files (rank 0 owns them)
            try:
                needed = not is_complete(cache_dir / split, build)
            except CacheCorruptError:  # rank 0 refuses, or replaces it with --overwrite
                needed = True
        if not needed:
            print(f"rlrt cache: {split}: complete already -> {cache_dir / split}")
            continue
        jobs.append(SplitJob(cache_dir / split, sources, build))
    # every split in one pass: the encoders go to the device once
    build_splits(
        trainer,
        extractor,
        writer,
        jobs,
        shapes=shapes,
        batch_size=batch_size,
        num_workers=getattr(datamodule, "num_workers", 0),
    )
    for job in jobs:
        split, sources, folder = job.folder.name, job.sources, job.folder
        built.add(split)
        seconds = writer.seconds.get(folder, 0.0)
        report.samples[split], report.seconds[split] = len(sources.ids), seconds
        if trainer.world_size > 1:  # which process did what: each encodes its shard
            written = writer.written.get(folder, {"images": 0, "texts": 0})
            print(
                f"rlrt cache: {split}: rank {trainer.global_rank} of {trainer.world_size} "
                f"encoded {written['images']} images and {written['texts']} texts",
                flush=True,
            )
        if trainer.is_global_zero:
            size = folder_size(folder) / 2**20
            print(
                f"rlrt cache: {split}: {len(sources.ids)} samples, {len(sources.image_paths)} "
                f"images, {size:.1f} MiB, {seconds:.1f} s -> {folder}"
            )
    if args.verify and trainer.is_global_zero:
        checked = [
            verify_split(cache_dir / name) if name in built else SplitCacheReader(cache_dir / name)
            for name in ("dummy", *splits)
        ]
        rows = sum(len(r) + len(r.image_tokens) for r in checked)
        print(
            f"rlrt cache: verify: ok: {', '.join(r.folder.name for r in checked)}: "
            f"{rows} sample and image rows, all finite and in range -> {cache_dir}"
        )
    return report
