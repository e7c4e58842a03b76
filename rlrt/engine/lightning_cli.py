"""`RLRTCLI`: the LightningCLI behind `rlrt fit|validate|test|predict` and every command that trains
or tests (`rlrt.commands`).

Configs compose in order (`--config trainer.yaml --config data.yaml --config model.yaml`); values
that must agree are typed once and linked: the image size flows from the image encoder to the data
module, the number of classes, the task type and the class names from the data module to the model.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from jsonargparse import ArgumentParser, Namespace
from lightning import LightningDataModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

# Imported so that their classes are known by their short names (`--data MMIMDBDataModule`,
# `--data.help MMIMDBDataModule`, `--trainer.callbacks+=MissingModality`).
import callbacks as _callbacks  # noqa: F401
import data_modules as _data_modules  # noqa: F401
from rlrt.engine.checkpoints import find_intact_last_checkpoint, read_checkpoint
from rlrt.engine.console import quiet_lightning
from rlrt.engine.files import atomic_write_json
from rlrt.engine.moved import upgrade_config_args
from rlrt.engine.resume import ExactResume, SaveOnTerminate
from rlrt.engine.run_folders import (
    NoOverwriteSaveConfig,
    claim_run_dirs,
    discard_unused_run_dir,
    last_checkpoint_folders,
    last_checkpoint_folders_of_config,
    refuse_used_run_dir,
    self_versioned_loggers,
)
from rlrt.engine.threads import choose_threads
from rlrt.losses import check_cca_window
from rlrt.system import RLRT


class RLRTCLI(LightningCLI):
    """LightningCLI for `RLRT` with any `LightningDataModule` by `class_path`.

    Reliability (docs/reliability.md):
    - parse errors raise `ArgumentError` (`main` prints them as one line) instead of a usage dump;
    - every run writes into a new run directory and refuses to reuse one (`NoOverwriteSaveConfig`);
      it is created before anything runs (`claim_run_dirs`), so runs started at once get one each;
    - `--ckpt_path last` is the newest intact `last*.ckpt` of any earlier run of the logger's
      directory (a resumed run gets its own directory; a truncated one is skipped, saying so);
      a `fit` stopped by SIGTERM saves `last.ckpt` first and exits with 143; checkpoints load
      with `weights_only=True` and are checked (readable, digest, encoders, head) before
      anything runs;
    - the RNG states and the loader's position travel with checkpoints (`ExactResume`), so a
      resumed `fit` continues exactly as an uninterrupted one;
    - the config decides the model: Lightning's merging of a checkpoint's hyperparameters into
      the config is off, and a checkpoint that disagrees with the config is refused.
    """

    _intact_checkpoint: str | None = None  # the `--ckpt_path last` found, read intact
    _claimed_run_dirs: list[Path] = []  # the run directories `claim_run_dirs` created

    def __init__(self, *args, **kwargs) -> None:
        quiet_lightning()
        kwargs.setdefault("model_class", RLRT)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", NoOverwriteSaveConfig)
        kwargs["parser_kwargs"] = {"exit_on_error": False, **(kwargs.get("parser_kwargs") or {})}
        defaults = dict(kwargs.get("trainer_defaults") or {})
        callbacks = defaults.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        defaults["callbacks"] = [*callbacks, ExactResume(), SaveOnTerminate()]
        kwargs["trainer_defaults"] = defaults
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments(
            "model.image_encoder.init_args.image_size", "data.init_args.image_size"
        )
        for name in ("num_classes", "task", "class_names"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.add_argument(
            "--layer_pairs",
            type=int | None,
            default=None,
            help="number of layer pairs L_s: sets both encoders' `layers` to this count "
            "(one key for sweeps); unset, each encoder's own `layers` applies",
        )
        parser.add_argument(
            "--threads",
            type=int | None,
            default=None,
            help="torch intra-op threads in the main process; unset: the CPUs available to the "
            "process minus one per DataLoader worker (OMP_NUM_THREADS, when set, is kept)",
        )

    def parse_arguments(self, parser, args) -> None:
        """Lightning's, without its warning that `args` and `sys.argv` are both given: the
        commands here (`rlrt demo`, `rlrt compare`, ...) build their runs from their own argument
        lists on purpose, under their own command line. Config files naming classes by their
        paths before rlrt 0.2 are read with the current ones (`rlrt.engine.moved`)."""
        if isinstance(args, list):
            args = upgrade_config_args(args)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            try:
                super().parse_arguments(parser, args)
            except UnicodeDecodeError as err:
                raise ValueError(_undecodable_config(args, err)) from err

    def before_instantiate_classes(self) -> None:
        """Apply `layer_pairs` to both encoders; for `predict`, give a data module that reads its
        classes from a checkpoint (an init arg `checkpoint` left unset) the `--ckpt_path`."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        _refuse_linked_model_values(config)
        if self.subcommand == "fit":
            _refuse_training_nothing(config.get("trainer"))
            _warn_single_sample_batches(config)
        workers = config.get("data", {}).get("init_args", {}).get("num_workers") or 0
        threads = choose_threads(config.get("threads"), workers)
        if threads is not None:
            torch.set_num_threads(threads)
        model = config.get("model")
        if model is not None and model.get("common_dim") is not None:
            # Before the encoders load (a 7B text model takes minutes): the model would refuse too.
            check_cca_window(
                common_dim=model.common_dim,
                window=model.cca_window,
                beta=model.beta,
                allow=model.cca_allow_degenerate,
            )
        pairs = config.get("layer_pairs")
        if pairs is not None:
            for side in ("image_encoder", "text_encoder"):
                config.model[side].init_args.layers = pairs
        init_args = config.get("data", {}).get("init_args")
        if self.subcommand == "predict" and init_args is not None and "checkpoint" in init_args:
            if init_args.checkpoint is None:
                if config.get("ckpt_path") == "last":  # resolved now: the data needs the file
                    config.ckpt_path = self._last_checkpoint(
                        last_checkpoint_folders_of_config(config.trainer)
                    )
                init_args.checkpoint = config.ckpt_path

    def _run_subcommand(self, subcommand: str) -> None:
        """Lightning's, removing this run's directory when the run fails before producing
        anything (`discard_unused_run_dir`): a refused run leaves no empty `version_N`."""
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            for callback in self.trainer.callbacks:
                written = getattr(callback, "written_run_dir", None)
                if isinstance(callback, NoOverwriteSaveConfig) and written is not None:
                    discard_unused_run_dir(written)
            for claimed in self._claimed_run_dirs:  # made by `claim_run_dirs`, maybe still empty
                discard_unused_run_dir(claimed)
            raise

    def _parse_ckpt_path(self) -> None:
        """Off: Lightning would overwrite the config's model with the checkpoint's
        hyperparameters, silently. Here the config decides, and `RLRT.on_load_checkpoint`
        refuses a checkpoint that does not fit it, naming the field."""

    def after_instantiate_classes(self) -> None:
        """Refuse a used run directory, resolve `--ckpt_path last`, default `weights_only` to
        True, and read the checkpoint once (truncated, corrupted or pickled files fail here, in
        one line, before any work)."""
        if not self.subcommand:
            return
        self_versioned = self_versioned_loggers(self.trainer)
        if self.save_config_callback is not None:
            refuse_used_run_dir(self.trainer)  # before the data module writes its report there
        config = self.config_init[self.subcommand]
        if "weights_only" in config and config.weights_only is None:
            config.weights_only = True
        if config.get("ckpt_path") == "last":
            config.ckpt_path = self._last_checkpoint()
        if config.get("ckpt_path") not in (None, "best", "hpc", self._intact_checkpoint):
            read_checkpoint(config.ckpt_path)  # `last` was read when it was chosen
        if self.save_config_callback is not None:  # last: nothing after it refuses the run
            self._claimed_run_dirs = claim_run_dirs(self_versioned)

    def _last_checkpoint(self, folders: list[Path] | None = None) -> str | None:
        folders = last_checkpoint_folders(self.trainer) if folders is None else folders
        found, skipped = find_intact_last_checkpoint(folders)
        passed = "; ".join(f"{path} ({why})" for path, why in skipped)
        if found is not None:
            self._intact_checkpoint = str(found)
            rank_zero_info(
                f"--ckpt_path last: {found}" + (f", skipping the newer {passed}" if skipped else "")
            )
            return str(found)
        where = ", ".join(str(f) for f in folders[:3]) or "the logger's directory (none yet)"
        if skipped:
            where += f" that reads intact (skipped {passed})"
        if self.subcommand == "fit":
            rank_zero_info(f"--ckpt_path last: no last checkpoint in {where}; starting afresh")
            return None
        raise FileNotFoundError(
            f"--ckpt_path last: no last checkpoint in {where}; run `rlrt fit` with this config "
            "first, or give the path of a checkpoint"
        )

    def after_test(self) -> None:
        """Write the test metrics to `metrics.json` in the run directory (beside config.yaml),
        and the perturbation protocol in effect (callbacks with a `protocol()`, e.g.
        `MissingModality`, `ModalityNoise`) to `protocol.json`."""
        metrics = {
            key: float(value)
            for key, value in self.trainer.callback_metrics.items()
            if key.startswith("test/")
        }
        self.test_metrics = metrics
        protocol = {"missing_strategy": getattr(self.model, "missing_strategy", None)}
        for callback in self.trainer.callbacks:
            if callable(getattr(callback, "protocol", None)):
                protocol.update(callback.protocol(self.model))
        self.test_protocol = protocol
        log_dir = self.trainer.log_dir
        if log_dir is not None and self.trainer.is_global_zero:
            atomic_write_json(Path(log_dir) / "metrics.json", metrics)
            atomic_write_json(Path(log_dir) / "protocol.json", protocol)


def _undecodable_config(args: list[str] | None, err: UnicodeDecodeError) -> str:
    """One line naming the file among `args` (`--config FILE`, `--config=FILE`, or a file given
    to any option) that is not UTF-8 text; jsonargparse's own error names no file."""
    given = sys.argv[1:] if args is None else args
    values = [a.split("=", 1)[1] if a.startswith("--") and "=" in a else a for a in given]
    for value in values:
        path = Path(value)
        try:
            if path.is_file():
                path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as bad:
            return (
                f"config file {path} is not a UTF-8 YAML file (byte 0x{bad.object[bad.start]:02x} "
                f"at offset {bad.start} is not UTF-8 text); pass a YAML config"
            )
        except (OSError, ValueError):
            continue
    return f"a config file is not a UTF-8 YAML file ({err.reason} at offset {err.start})"


def parse_only(args: list[str]) -> Namespace:
    """Parse `--config` files and overrides with the real parser and links, building nothing."""
    return _ParseOnlyCLI(args=args, run=False).config


def instantiate_group(config: Namespace, group: str, base: type) -> object:
    """Build one `class_path` group (e.g. `data`) of a parsed config, leaving the others alone."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, group)
    parsed = parser.parse_object({group: config[group].as_dict()})
    return parser.instantiate(parsed)[group]


class _ParseOnlyCLI(RLRTCLI):
    def instantiate_classes(self) -> None:
        pass

    def _set_seed(self) -> None:
        pass  # parsing builds nothing, so it seeds nothing (and warns of no missing seed)


def _refuse_linked_model_values(config: Namespace) -> None:
    """A config file may set `model.num_classes` (the command line may not); the data module's
    value would silently replace it, so say so instead."""
    model = config.get("model")
    for name in ("num_classes", "task", "class_names"):
        if model is not None and model.get(name) is not None:
            raise ValueError(
                f"model.{name}={model.get(name)!r} is set in the config, but {name} comes from "
                f"the data module (data.{name}); remove model.{name} from the config"
            )


def _refuse_training_nothing(trainer: Namespace | None) -> None:
    """`fit` with `max_epochs` or `max_steps` 0 would end at once with no checkpoint, exit 0:
    say so (before the encoders load) instead."""
    for name in ("max_epochs", "max_steps"):
        if trainer is not None and trainer.get(name) == 0:
            raise ValueError(
                f"--trainer.{name}=0: `rlrt fit` would train nothing and write no checkpoint; "
                f"give --trainer.{name} 1 or more (-1: no limit)"
            )


def _warn_single_sample_batches(config: Namespace) -> None:
    """Batches of one train (the task loss), but `L_CCA` needs two samples in a batch: say once
    that it adds nothing in this run rather than let it vanish silently."""
    batch_size = (config.get("data") or {}).get("init_args", {}).get("batch_size")
    model = config.get("model")
    if batch_size == 1 and model is not None and model.get("beta", 1) != 0:
        warnings.warn(
            "data.batch_size=1: L_CCA needs at least 2 samples with both modalities in a batch, "
            "so it adds nothing in this run (only the task loss trains); give a batch size of "
            "2 or more, or model.beta=0 to train without it",
            UserWarning,
            stacklevel=2,
        )


def run_lightning_command(argv: list[str]) -> None:
    """`rlrt fit|validate|test|predict ...`: Lightning's own subcommands, through `RLRTCLI`."""
    with warnings.catch_warnings():
        # argv is passed explicitly (without --debug); Lightning warns when sys.argv has more.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        RLRTCLI(args=argv)
