"""Help that helps: every option of a class a config names has its own line of help (no
docstring line describing three parameters at once), short class names work in `--*.help`, and
`rlrt --help` lists every command with one line."""

from __future__ import annotations

import re

import pytest
from jsonargparse import ArgumentParser

import callbacks
import data_modules
from rlrt.cli import COMMANDS, LIGHTNING_COMMANDS, main
from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder
from rlrt.engine.checkpoints import RunCheckpoint
from rlrt.engine.loggers import WandbLogger
from rlrt.system import RLRT

CONFIGURABLE = [
    RLRT,
    FrozenImageEncoder,
    FrozenTextEncoder,
    RunCheckpoint,
    WandbLogger,
    data_modules.MMIMDBDataModule,
    data_modules.Food101DataModule,
    data_modules.SNLIVEDataModule,
    data_modules.PairsDataModule,
    data_modules.DemoMMIMDBDataModule,
    callbacks.MissingModality,
    callbacks.ModalityNoise,
    callbacks.PredictionWriter,
    callbacks.ResultsTable,
]
LINKED = {"num_classes", "task", "class_names"}  # RLRT's, set from the data module


def option_help(cls: type) -> dict[str, str]:
    """Option name -> the help text jsonargparse shows for it, without the type/default note."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "x", skip=LINKED if cls is RLRT else set())
    shown = {}
    for action in parser._actions:
        if action.dest.startswith("x.") and action.dest.count(".") == 1:
            text = re.sub(r"\((required, )?type:.*\)\s*$", "", (action.help or "").strip())
            shown[action.dest[2:]] = text.strip()
    return shown


@pytest.mark.parametrize("cls", CONFIGURABLE, ids=lambda c: c.__name__)
def test_every_option_has_its_own_help(cls):
    shown = option_help(cls)
    undocumented = sorted(name for name, text in shown.items() if not text)
    assert undocumented == []
    for name, text in shown.items():
        others = [o for o in shown if o != name and re.search(rf"(^|[\s,]){o}:", text)]
        assert others == [], f"the help of {name} describes {others} too: {text!r}"


def test_the_checker_sees_a_shared_docstring_line():
    class Shared:
        """Two options, one line.

        Args:
            a: first. b: second.
        """

        def __init__(self, a: int = 1, b: int = 2) -> None:
            pass

    shown = option_help(Shared)
    assert shown["b"] == "" and "b:" in shown["a"]


def test_short_class_names_work_in_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--data.help", "MMIMDBDataModule"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--data.text_unit" in out and "--data.root" in out


def test_rlrt_help_lists_every_command_with_one_line(capsys):
    main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for command in [*LIGHTNING_COMMANDS, *COMMANDS]:
        described = [line for line in lines if line.split()[:1] == [command]]
        assert len(described) == 1 and len(described[0].split()) > 2, command
