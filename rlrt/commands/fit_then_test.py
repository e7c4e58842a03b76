r"""`rlrt fit-test`: `rlrt fit`, then `rlrt test` on its best checkpoint, with the same arguments.

One program per run, as a wandb sweep agent needs (`configs/sweeps/ablations.yaml`):

    rlrt fit-test --config configs/trainer/demo.yaml --config configs/data/demo.yaml \
        --config configs/model/demo.yaml [--cache_root DIR] [--model.beta=0 ...]

With `--cache_root DIR` both run from a feature cache in `DIR/<data class>-<hash>`, the hash of
the data and encoder settings (so runs that tap other layers get their own cache); it is built
by `rlrt cache` on first use and reused by every later run with the same settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from rlrt.commands.cache import run_cache
from rlrt.engine.lightning_cli import RLRTCLI, parse_only


def best_checkpoint(trainer: Any) -> str:
    """The best checkpoint of a finished fit (the last one when no metric was monitored)."""
    callback = trainer.checkpoint_callback
    if callback is None:
        raise RuntimeError("fit-test needs a ModelCheckpoint callback to test the trained model")
    path = callback.best_model_path or callback.last_model_path
    if not path:
        raise RuntimeError("fit-test: the fit saved no checkpoint")
    return path


def cache_folder(root: Path, argv: list[str]) -> Path:
    """`root/<data class>-<hash of the data and encoder settings>` for the run of `argv`."""
    config = parse_only(argv)
    data = config.data.as_dict()
    data.get("init_args", {}).pop("feature_cache", None)
    settings = {
        "data": data,
        "image_encoder": config.model.image_encoder.as_dict(),
        "text_encoder": config.model.text_encoder.as_dict(),
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    name = str(data.get("class_path", "data")).rsplit(".", 1)[-1]
    return root / f"{name}-{digest.hexdigest()[:12]}"


def with_cache(root: Path, argv: list[str]) -> list[str]:
    """`argv` reading from its feature cache under `root` (`cache_folder`), built first when it
    is not complete yet (`rlrt cache` skips complete splits)."""

    argv = [*argv, f"--data.init_args.feature_cache={cache_folder(root, argv)}"]
    run_cache([*argv, "--trainer.callbacks=[]"])  # the run's callbacks are not for caching
    return argv


def run_fit_test(argv: list[str]) -> dict[str, float]:
    """Fit, test the best checkpoint, return the test metrics (`{"test/<metric>": value}`)."""
    parser = argparse.ArgumentParser(
        prog="rlrt fit-test",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Other arguments go to `rlrt fit` and `rlrt test`.",
    )
    parser.add_argument("--cache_root", default=None, help="run from a feature cache under it")
    args, rest = parser.parse_known_args(argv)
    if args.cache_root is not None:
        rest = with_cache(Path(args.cache_root), rest)
    fit = RLRTCLI(args=["fit", *rest])
    test = RLRTCLI(args=["test", *rest, "--ckpt_path", best_checkpoint(fit.trainer)])
    return test.test_metrics
