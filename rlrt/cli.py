"""The `rlrt` command: a LightningCLI (`fit`, `validate`, `test`, `predict`) plus `demo`.

Configs compose in order (`--config trainer.yaml --config data.yaml --config model.yaml`); values
that must agree are typed once and linked: the image size flows from the image encoder to the data
module, the number of classes, the task type and the class names from the data module to the model.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace
from lightning import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from rlrt.io import atomic_write_json
from rlrt.system import RLRT


class RLRTCLI(LightningCLI):
    """LightningCLI for `RLRT` with any `LightningDataModule` by `class_path`."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", RLRT)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_data", True)
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

    def before_instantiate_classes(self) -> None:
        """Apply `layer_pairs` to both encoders; for `predict`, give a data module that reads its
        classes from a checkpoint (an init arg `checkpoint` left unset) the `--ckpt_path`."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        pairs = config.get("layer_pairs")
        if pairs is not None:
            for side in ("image_encoder", "text_encoder"):
                config.model[side].init_args.layers = pairs
        init_args = config.get("data", {}).get("init_args")
        if self.subcommand == "predict" and init_args is not None and "checkpoint" in init_args:
            if init_args.checkpoint is None:
                init_args.checkpoint = config.ckpt_path

    def after_test(self) -> None:
        """Write the test metrics to `metrics.json` in the run directory (beside config.yaml)."""
        metrics = {
            key: float(value)
            for key, value in self.trainer.callback_metrics.items()
            if key.startswith("test/")
        }
        self.test_metrics = metrics
        log_dir = self.trainer.log_dir
        if log_dir is not None and self.trainer.is_global_zero:
            atomic_write_json(Path(log_dir) / "metrics.json", metrics)


# Commands beyond Lightning's own: name -> "module:function(argv)". Each takes the same
# --config / --data.* / --model.* arguments as `fit`, plus options of its own.
EXTRA_COMMANDS = {
    "demo": "rlrt.demo:run_demo",
    "robustness": "rlrt.robustness:run_robustness",
    "robustness-report": "rlrt.robustness_report:run_report",
    "cache": "rlrt.cache:run_cache",
}


def parse_only(args: list[str]) -> Namespace:
    """Parse `--config` files and overrides with the real parser and links, building nothing."""
    return _ParseOnlyCLI(args=args, run=False).config


def instantiate_group(config: Namespace, group: str, base: type) -> object:
    """Build one `class_path` group (e.g. `data`) of a parsed config, leaving the others alone."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, group)
    parsed = parser.parse_object({group: config[group].as_dict()})
    return parser.instantiate_classes(parsed)[group]


class _ParseOnlyCLI(RLRTCLI):
    def instantiate_classes(self) -> None:
        pass


def main(args: list[str] | None = None) -> None:
    """Console entry point: Lightning's subcommands, plus the extra commands above."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] and argv[0] in EXTRA_COMMANDS:
        module_name, function_name = EXTRA_COMMANDS[argv[0]].split(":")
        getattr(importlib.import_module(module_name), function_name)(argv[1:])
        return
    if argv[:1] in (["-h"], ["--help"]):
        print(f"extra commands: {', '.join(EXTRA_COMMANDS)} (each with --help)\n")
    RLRTCLI(args=args)


if __name__ == "__main__":
    main()
