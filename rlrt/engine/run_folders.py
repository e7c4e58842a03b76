"""Run directories: each run writes into its own, and later runs can find earlier runs' checkpoints.

A run directory is the logger's `save_dir/name/version_N` (a new `N` per run), holding
`config.yaml`, the logs, `checkpoints/` and, for `test`, `metrics.json`. A resumed run is a new
run: it reads the checkpoint of the run it resumes and writes only into its own directory.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback


def used_run_dir_error(run_dir: Path, marker: str) -> FileExistsError:
    return FileExistsError(
        f"run directory {run_dir} already holds an earlier run ({marker}); give the logger "
        "another version (or none, for the next free one) instead of overwriting it"
    )


def refuse_used_run_dir(trainer: Trainer, marker: str = "config.yaml") -> None:
    """Raise before anything runs when the run directory already holds an earlier run's
    `marker` (rank zero checks; the other ranks of a launched job skip)."""
    if not trainer.loggers or not trainer.is_global_zero:
        return
    run_dir = Path(trainer.log_dir or ".")
    if (run_dir / marker).is_file():
        raise used_run_dir_error(run_dir, marker)


def self_versioned_loggers(trainer: Trainer) -> list[Any]:
    """The trainer's loggers that choose the next free `version_N` themselves (no `version`
    given), before any has chosen; pass them to `claim_run_dirs`."""
    return [
        logger
        for logger in trainer.loggers
        if getattr(logger, "_version", "") is None and getattr(logger, "_experiment", None) is None
    ]


def claim_run_dirs(loggers: list[Any]) -> list[Path]:
    """Create the run directory `version_N` of each of `loggers` (`self_versioned_loggers`)
    now, exclusively, moving on to `N + 1` when another run created it first: two runs started
    at once into one logger directory then get two directories, never one shared (a logger
    chooses its version by listing the folder, and creates the directory only when the run
    first writes there). Returns the directories created. Only the launching process claims
    (the other processes of a launched job use rank zero's directory)."""
    if _launched_worker():
        return []
    claimed = []
    for logger in loggers:
        version = logger.version
        while isinstance(version, int):
            logger._version = version
            run_dir = Path(logger.log_dir)
            if run_dir.name != f"version_{version}":  # another layout (a sub_dir): left alone
                break
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                run_dir.mkdir()
            except FileExistsError:  # another run took it since the folder was listed
                version += 1
                continue
            claimed.append(run_dir)
            break
    return claimed


def _launched_worker() -> bool:
    """Whether this process is a non-zero rank that a launcher (Lightning's, torchrun) started."""
    ranks = (os.environ.get(name, "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    return any(rank.strip() not in ("", "0") for rank in ranks)


class NoOverwriteSaveConfig(SaveConfigCallback):
    """Lightning's `SaveConfigCallback`, refusing in one line to write into a used run directory.

    A run directory already holding `config.yaml` belongs to an earlier run (a logger given a
    fixed `version`): nothing is written and the run stops before training.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.save_to_log_dir and not self.already_saved and not self.overwrite:
            log_dir = trainer.log_dir
            config_path = Path(log_dir or ".") / self.config_filename
            exists = config_path.is_file() if trainer.is_global_zero else False
            if trainer.strategy.broadcast(exists):
                raise used_run_dir_error(config_path.parent, self.config_filename)
        super().setup(trainer, pl_module, stage)
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if self.already_saved and trainer.is_global_zero and log_dir is not None:
            self.written_run_dir = Path(log_dir)  # this run's own: it may discard it

    written_run_dir: Path | None = None


# What a run writes before it does any work: its records, nothing a user could need once it failed.
RUN_RECORDS = {"config.yaml", "hparams.yaml"}


def discard_unused_run_dir(run_dir: Path) -> bool:
    """Remove the directory of a run that failed before producing anything: it holds only the
    run's records (`config.yaml`, `hparams.yaml`), an empty `metrics.csv` or one with a header
    only, and a bad-sample report that names no sample. Returns whether it was removed.

    Anything else keeps it: a checkpoint, a logged value, a report naming bad samples (the
    refusal message points at it), a file the user put there.
    """
    if not run_dir.is_dir():
        return False
    for path in run_dir.rglob("*"):
        if path.is_dir():
            continue
        relative = path.relative_to(run_dir).as_posix()
        if relative in RUN_RECORDS:
            continue
        if relative == "metrics.csv" and len(path.read_text().splitlines()) <= 1:
            continue
        if relative == "bad_samples.json" and _names_no_sample(path):
            continue
        return False
    shutil.rmtree(run_dir)
    return True


def _names_no_sample(report: Path) -> bool:
    try:
        return json.loads(report.read_text()).get("samples") == []
    except (OSError, ValueError, AttributeError):
        return False


def last_checkpoint_folders(trainer: Trainer) -> list[Path]:
    """The folders where this config's runs keep their checkpoints, earlier runs included.

    Mirrors where `ModelCheckpoint` writes: its `dirpath` when set; else
    `save_dir/name/<version>/checkpoints` of the first logger, over every version; else
    `default_root_dir/checkpoints`.
    """
    callback = trainer.checkpoint_callback
    logger = trainer.loggers[0] if trainer.loggers else None
    return _checkpoint_folders(getattr(callback, "dirpath", None), logger, trainer.default_root_dir)


def last_checkpoint_folders_of_config(trainer_config: Namespace) -> list[Path]:
    """`last_checkpoint_folders` from a parsed `trainer` config, before any Trainer exists (only
    its checkpoint callback and first logger are built, which touch no files).

    `rlrt predict --ckpt_path last` needs it: the data module reads its classes from the
    checkpoint, and it is built before the Trainer.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    root = trainer_config.get("default_root_dir") or "."
    dirpath = None
    for spec in _as_list(trainer_config.get("callbacks")):
        if isinstance(spec, ModelCheckpoint):
            dirpath = spec.dirpath
            break
        if isinstance(spec, Namespace | dict) and issubclass(_class(spec), ModelCheckpoint):
            dirpath = _build(spec).dirpath  # only checkpoint callbacks are built
            break
    logger_config = trainer_config.get("logger")
    if logger_config is None or logger_config is True:  # Lightning's default logger
        logger = TensorBoardLogger(root) if logger_config else None
    elif logger_config is False or not _as_list(logger_config):
        logger = None
    else:
        logger = _build(_as_list(logger_config)[0])
    return _checkpoint_folders(dirpath, logger, root)


def _checkpoint_folders(dirpath: str | None, logger: Any, default_root_dir: str) -> list[Path]:
    if dirpath:
        return [Path(dirpath)]
    if logger is not None:
        root = Path(logger.save_dir or default_root_dir) / str(logger.name or "")
        if not root.is_dir():
            return []
        return sorted(run / "checkpoints" for run in root.iterdir() if run.is_dir())
    return [Path(default_root_dir) / "checkpoints"]


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _class(spec: Namespace | dict) -> type:
    """The class a `class_path` config entry names."""
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def _build(spec: Any) -> Any:
    """An object from a `class_path` / `init_args` config entry (or the object itself)."""
    if not isinstance(spec, Namespace | dict):
        return spec
    spec = spec if isinstance(spec, dict) else spec.as_dict()
    return _class(spec)(**(spec.get("init_args") or {}))
