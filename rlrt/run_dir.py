"""Run directories: each run writes into its own, and later runs can find earlier runs' checkpoints.

A run directory is the logger's `save_dir/name/version_N` (a new `N` per run), holding
`config.yaml`, the logs, `checkpoints/` and, for `test`, `metrics.json`. A resumed run is a new
run: it reads the checkpoint of the run it resumes and writes only into its own directory.
"""

from __future__ import annotations

from pathlib import Path

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


def last_checkpoint_folders(trainer: Trainer) -> list[Path]:
    """The folders where this config's runs keep their checkpoints, earlier runs included.

    Mirrors where `ModelCheckpoint` writes: its `dirpath` when set; else
    `save_dir/name/<version>/checkpoints` of the first logger, over every version; else
    `default_root_dir/checkpoints`.
    """
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "dirpath", None):
        return [Path(callback.dirpath)]
    if trainer.loggers:
        logger = trainer.loggers[0]
        root = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name or "")
        if not root.is_dir():
            return []
        return sorted(run / "checkpoints" for run in root.iterdir() if run.is_dir())
    return [Path(trainer.default_root_dir) / "checkpoints"]
