"""The `rlrt` command: Lightning's `fit`, `validate`, `test`, `predict`
(`rlrt.engine.lightning_cli`) and the project's own commands (`rlrt.commands`).

Only this small module loads for `rlrt --help`; a command's module (and torch with it) is imported
when the command runs.
"""

from __future__ import annotations

import importlib
import sys

LIGHTNING_COMMANDS = {
    "fit": "train a model (the method: `--config configs/model/rlrt.yaml`)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split (writes metrics.json)",
    "predict": "classify new image-text pairs with a checkpoint",
}

# name -> (module in rlrt.commands, function taking argv, one line of help). Imported on use only,
# so that `rlrt --help` and every command's own `--help` start in a second.
COMMANDS = {
    "demo": ("demo", "run_demo", "train, test and plot RLRT on generated data in about a minute"),
    "fit-test": ("fit_then_test", "run_fit_test", "fit, then test the best checkpoint"),
    "cache": ("cache", "run_cache", "encode a dataset once with the frozen encoders"),
    "robustness": (
        "robustness",
        "run_robustness",
        "test a checkpoint under missing and noisy modalities (table, CSV, figure)",
    ),
    "robustness-report": (
        "robustness_report",
        "run_report",
        "combine robustness.csv files of several models into one table and figure",
    ),
    "compare": ("compare", "run_compare", "train RLRT and baselines, then compare robustness"),
    "ablations": ("ablations", "run_ablations", "run the ablation grid, one run per variant"),
    "shared-fraction": (
        "shared_fraction",
        "run_shared_fraction",
        "RLRT vs fair baselines on demo data with more or less shared information",
    ),
    "reproduce-table1": (
        "reproduce",
        "run_reproduce_table1",
        "train and test on the three datasets; print Table 1 beside the paper's",
    ),
    "inspect-data": ("inspect_data", "run_inspect_data", "check a dataset's files and samples"),
    "bench": ("bench", "run_bench", "measure speed and memory (writes figures to files)"),
}


def usage() -> str:
    """`rlrt --help`: every command with one line."""
    width = max(map(len, [*LIGHTNING_COMMANDS, *COMMANDS])) + 2
    lines = ["usage: rlrt COMMAND [--config FILE ...] [options]   (rlrt COMMAND --help)", ""]
    lines += [f"  {name:<{width}}{text}" for name, text in LIGHTNING_COMMANDS.items()]
    lines += [f"  {name:<{width}}{text}" for name, (_, _, text) in COMMANDS.items()]
    lines += ["", "--debug (anywhere): show the traceback of an error"]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Console entry point.

    A user error (bad config, missing data or model, unusable checkpoint, ...) ends with one line
    `rlrt: error: ...` on stderr and exit status 2; `--debug` anywhere shows the traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if [a for a in argv if a != "--debug"][:1] in ([], ["-h"], ["--help"]):
        print(usage())
        return
    # here, not at the top: it imports Lightning, which `rlrt --help` does not need
    from rlrt.engine.errors import command_name, run_reporting_errors, split_debug_flag

    commands = [*LIGHTNING_COMMANDS, *COMMANDS]
    run_reporting_errors(_dispatch, argv, command_name(split_debug_flag(argv)[0], commands))


def _dispatch(argv: list[str]) -> None:
    from rlrt.engine.lightning_cli import run_lightning_command

    if argv[0] in COMMANDS:
        module, function, _ = COMMANDS[argv[0]]
        getattr(importlib.import_module(f"rlrt.commands.{module}"), function)(argv[1:])
    else:
        run_lightning_command(argv)


if __name__ == "__main__":
    main()
