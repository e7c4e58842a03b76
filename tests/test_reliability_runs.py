"""Runs that end badly: a full disk while checkpointing, a truncated newest `last.ckpt`, a `fit`
stopped by SIGTERM (a scheduler's preemption)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from rlrt.engine.checkpoints import (
    CheckpointWriteError,
    RunCheckpoint,
    find_intact_last_checkpoint,
    read_checkpoint,
)
from rlrt.engine.errors import TERMINATED, user_error_message
from rlrt.engine.lightning_cli import RLRTCLI
from tests.test_resume import fit_args, run_rlrt, train_losses

TERM_STEP = 5  # 4 batches per epoch: the signal comes during step 5, the second of epoch 1

TRAINER_YAML = """
seed_everything: 0
trainer:
  max_epochs: 2
  accelerator: cpu
  devices: 1
  precision: 32-true
  deterministic: true
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args:
        save_dir: runs
        name: rlrt
  callbacks:
    - class_path: rlrt.engine.checkpoints.RunCheckpoint
      init_args:
        save_last: true
"""


class TermAtStep(Callback):
    """Send this process SIGTERM when the training batch of global step `step` starts, as a
    batch scheduler preempting the job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tiny_fit(folder: Path, max_steps: int, ckpt_path: str | None = None) -> RunCheckpoint:
    callback = RunCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=1)
    trainer = Trainer(
        max_steps=max_steps,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(TensorDataset(torch.ones(8, 1)), batch_size=2)
    trainer.fit(Tiny(), loader, ckpt_path=ckpt_path)
    return callback


# ------------------------------------------------------------------------- a full disk


def test_a_full_disk_while_checkpointing_leaves_the_earlier_last_ckpt_intact(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    tiny_fit(folder, max_steps=2)
    before = (folder / "last.ckpt").read_bytes()
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 2

    real_move = shutil.move

    def full_disk(src, dst, *args, **kwargs):
        """The copy of a written checkpoint into its folder runs out of space half-way."""
        if Path(dst).parent == folder:
            data = Path(src).read_bytes()
            Path(dst).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_move(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "move", full_disk)
    # on purpose: the resumed fit writes into the same folder, from a mid-epoch step
    resumed_here = pytest.warns(
        UserWarning, match="exists and is not empty|dataloader is not resumable"
    )
    with resumed_here, pytest.raises(CheckpointWriteError) as raised:
        tiny_fit(folder, max_steps=4, ckpt_path=str(folder / "last.ckpt"))
    monkeypatch.setattr(shutil, "move", real_move)

    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(folder)
    line = user_error_message(raised.value)
    assert str(folder) in line and "free space" in line and "\n" not in line
    assert (folder / "last.ckpt").read_bytes() == before  # the earlier one, untouched
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []  # no temp
    for checkpoint in folder.glob("*.ckpt"):
        read_checkpoint(checkpoint)  # nothing truncated left behind


# ------------------------------------------------------- a truncated newest last.ckpt


def test_ckpt_path_last_skips_a_truncated_newest_checkpoint(tmp_path, monkeypatch):
    older, newer = tmp_path / "version_0" / "checkpoints", tmp_path / "version_1" / "checkpoints"
    tiny_fit(older, max_steps=2)
    tiny_fit(newer, max_steps=3)
    truncated = newer / "last.ckpt"
    truncated.write_bytes(truncated.read_bytes()[:300])
    os.utime(truncated, ns=(10**19, 10**19))  # certainly the newest

    found, skipped = find_intact_last_checkpoint([older, newer])
    assert found == older / "last.ckpt"
    assert skipped == [(truncated, "truncated or corrupted")]

    said = []
    monkeypatch.setattr("rlrt.engine.lightning_cli.rank_zero_info", said.append)
    cli = SimpleNamespace(subcommand="fit")
    assert RLRTCLI._last_checkpoint(cli, [older, newer]) == str(older / "last.ckpt")
    assert said == [
        f"--ckpt_path last: {older / 'last.ckpt'}, skipping the newer {truncated} "
        "(truncated or corrupted)"
    ]
    # nothing intact at all: `fit` starts afresh, saying why; `test` refuses in one line
    (older / "last.ckpt").write_bytes(b"not a checkpoint")
    assert RLRTCLI._last_checkpoint(cli, [older, newer]) is None
    assert "skipped" in said[-1] and "starting afresh" in said[-1]
    with pytest.raises(FileNotFoundError, match="reads intact"):
        RLRTCLI._last_checkpoint(SimpleNamespace(subcommand="test"), [older, newer])


# ------------------------------------------------------------------------------ SIGTERM


@pytest.fixture(scope="module")
def terminated(tmp_path_factory, tiny_vit_config, tiny_llama_dir):
    """A fit sent SIGTERM during step 5, then resumed with `--ckpt_path last`, and an
    uninterrupted fit (subprocesses)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("sigterm")
    args = fit_args(base, tiny_vit_config, tiny_llama_dir)
    (base / "trainer.yaml").write_text(TRAINER_YAML)  # epoch-end checkpoints only
    term = {
        "class_path": "tests.test_reliability_runs.TermAtStep",
        "init_args": {"step": TERM_STEP},
    }
    stopped = run_rlrt(["fit", *args, f"--trainer.callbacks+={json.dumps(term)}"], base)
    first_run = base / "runs" / "rlrt" / "version_0"
    last_before = (first_run / "checkpoints" / "last.ckpt").read_bytes()
    resumed = run_rlrt(["fit", *args, "--ckpt_path", "last"], base)
    full = base / "full"
    full.mkdir()
    uninterrupted = run_rlrt(["fit", *args], full)
    torch.set_num_threads(threads)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    return {
        "stopped": stopped,
        "resumed": resumed,
        "full_run": full / "runs" / "rlrt" / "version_0",
        "first_run": first_run,
        "last_before": last_before,
        "resumed_run": base / "runs" / "rlrt" / "version_1",
    }


@pytest.mark.slow  # CLI processes, one SIGTERMed (make test-all, CI)
def test_sigterm_saves_last_ckpt_at_the_step_reached_and_exits_143(terminated):
    stopped = terminated["stopped"]
    assert stopped.returncode == TERMINATED == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    last_line = stopped.stderr.strip().splitlines()[-1]
    checkpoint = Path("runs") / "rlrt" / "version_0" / "checkpoints" / "last.ckpt"
    assert last_line.startswith("rlrt: terminated by SIGTERM; saved checkpoint ")
    assert str(checkpoint) in last_line and "--ckpt_path last" in last_line
    last = read_checkpoint(terminated["first_run"] / "checkpoints" / "last.ckpt")
    assert last["global_step"] == TERM_STEP + 1 == 6  # the batch in progress finished
    assert last["global_step"] % 4 != 0  # mid-epoch, not the epoch-end checkpoint
    assert f"at step {last['global_step']}" in last_line


@pytest.mark.slow  # CLI processes, one SIGTERMed (make test-all, CI)
def test_a_terminated_fit_resumes_from_its_last_ckpt(terminated):
    resumed = terminated["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"version_0{os.sep}checkpoints{os.sep}last.ckpt" in resumed.stderr + resumed.stdout
    losses = train_losses(terminated["resumed_run"])
    assert sorted(losses) == list(range(TERM_STEP + 1, 8))  # continues at step 6, ends at 8
    full_losses = train_losses(terminated["full_run"])  # same batches, same dropout
    assert all(losses[step] == full_losses[step] for step in losses)
    final = read_checkpoint(terminated["resumed_run"] / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 8
    # the terminated run's checkpoint is left as it was
    last = terminated["first_run"] / "checkpoints" / "last.ckpt"
    assert last.read_bytes() == terminated["last_before"]
