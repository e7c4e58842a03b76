"""Config files written before rlrt 0.2 keep working.

rlrt 0.2 moved the run machinery into `rlrt/engine` and the commands into `rlrt/commands`. A run's
saved `config.yaml` (which `rlrt robustness` and `--config RUN/config.yaml` read) and a user's own
configs may still name the old class paths. Such a file is read with the new names, the file itself
is left as it is, and one line says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

MOVED_IN_0_2 = {
    "rlrt.checkpoints.RunCheckpoint": "rlrt.engine.checkpoints.RunCheckpoint",
    "rlrt.loggers.WandbLogger": "rlrt.engine.loggers.WandbLogger",
    "rlrt.resume.ExactResume": "rlrt.engine.resume.ExactResume",
    "rlrt.resume.SaveOnTerminate": "rlrt.engine.resume.SaveOnTerminate",
    "rlrt.bench.EpochTimer": "rlrt.commands.bench_timing.EpochTimer",
}


def with_current_names(text: str) -> tuple[str, list[str]]:
    """`text` with every moved class path replaced, and the old paths it named."""
    found = [old for old in MOVED_IN_0_2 if old in text]
    for old in found:
        text = text.replace(old, MOVED_IN_0_2[old])
    return text, found


def upgrade_config_args(args: list[str]) -> list[str]:
    """`args` with each `--config FILE` that names moved classes replaced by its text with the
    current names (jsonargparse takes a config's YAML text in place of a path)."""
    upgraded = list(args)
    for index, arg in enumerate(upgraded):
        if arg == "--config" and index + 1 < len(upgraded):
            position, value = index + 1, upgraded[index + 1]
        elif arg.startswith("--config="):
            position, value = index, arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        try:
            text = path.read_text(encoding="utf-8") if path.is_file() else None
        except (OSError, UnicodeDecodeError):
            text = None  # the parser reports an unreadable config itself
        if text is None:
            continue
        text, found = with_current_names(text)
        if found:
            print(
                f"rlrt: {path} names classes moved in rlrt 0.2 ({', '.join(found)}); "
                "read with their new names, the file is unchanged",
                file=sys.stderr,
            )
            upgraded[position] = text if position == index + 1 else f"--config={text}"
    return upgraded
