"""Faults: a `fit` killed with SIGKILL mid-epoch and resumed with `--ckpt_path last` ends exactly
where an uninterrupted run ends; no run ever writes into an earlier run's directory."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

from data_modules.resumable import EpochShuffleSampler, ResumableDataLoader
from rlrt.cli import main
from rlrt.engine.checkpoints import RunCheckpoint
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.engine.resume import capture_rng_state, restore_rng_state
from rlrt.tiny_encoders import tiny_encoder_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
KILL_STEP = 7  # 4 batches per epoch: step 7 is the last batch of epoch 1
CHECKPOINT_EVERY = 2  # so the last checkpoint before the kill is step 6, mid-epoch 1

# Deterministic CPU trainer, a checkpoint every 2 steps (`last.ckpt` included), 3 epochs.
TRAINER_YAML = f"""
seed_everything: 0
trainer:
  max_epochs: 3
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
        every_n_train_steps: {CHECKPOINT_EVERY}
"""


# tiny models: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fit_args(base: Path, vit_config: Path, llama_dir: Path) -> list[str]:
    trainer = base / "trainer.yaml"
    trainer.write_text(TRAINER_YAML)
    return [
        "--config",
        str(trainer),
        "--config",
        str(CONFIGS / "data" / "demo.yaml"),
        "--config",
        str(CONFIGS / "model" / "demo.yaml"),
        f"--data.init_args.root={base / 'demo_data'}",
        "--data.init_args.num_movies=48",
        "--data.init_args.batch_size=8",
        "--data.init_args.num_workers=0",
        *tiny_encoder_args(vit_config, llama_dir),
    ]


def run_rlrt(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
    }
    return subprocess.run(
        [sys.executable, "-m", "rlrt.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=hear_ctrl_c,
    )


def hear_ctrl_c() -> None:
    """In the child before it starts: SIGINT back to its default. A shell starts background jobs
    with SIGINT ignored, which the test runner and its children inherit; Python then installs no
    KeyboardInterrupt handler and a test's Ctrl-C would go unheard, unlike at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def train_losses(run_dir: Path) -> dict[int, float]:
    return {
        int(r["step"]): float(r["train/loss_step"])
        for r in metric_rows(run_dir)
        if r.get("train/loss_step")
    }


def final_val(run_dir: Path) -> dict[str, float]:
    rows = [r for r in metric_rows(run_dir) if r.get("val/f1_macro")]
    # NaN (cca_corr on fewer samples than dimensions) compares equal to itself here
    return {k: repr(float(v)) for k, v in rows[-1].items() if k.startswith("val/") and v}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_vit_config, tiny_llama_dir):
    """An uninterrupted fit (in this process) and, beside it, a fit SIGKILLed at step 7 then
    resumed with `--ckpt_path last` (both through the console entry point, in subprocesses)."""
    base = tmp_path_factory.mktemp("resume")
    args = fit_args(base, tiny_vit_config, tiny_llama_dir)
    full, broken = base / "full", base / "broken"
    full.mkdir()
    broken.mkdir()

    kill = {"class_path": "tests.kill_callback.KillAtStep", "init_args": {"step": KILL_STEP}}
    killed = run_rlrt(["fit", *args, f"--trainer.callbacks+={json.dumps(kill)}"], broken)
    first_run = broken / "runs" / "rlrt" / "version_0"
    before_resume = snapshot(first_run)
    resumed = run_rlrt(["fit", *args, "--ckpt_path", "last"], broken)

    cwd = Path.cwd()
    os.chdir(full)
    try:
        RLRTCLI(args=["fit", *args])
    finally:
        os.chdir(cwd)
    return {
        "args": args,
        "killed": killed,
        "resumed": resumed,
        "first_run": first_run,
        "before_resume": before_resume,
        "resumed_run": broken / "runs" / "rlrt" / "version_1",
        "full_run": full / "runs" / "rlrt" / "version_0",
    }


@pytest.mark.slow  # three CLI processes, one SIGKILLed (make test-all, CI)
def test_killed_mid_epoch_after_a_checkpoint(runs):
    assert runs["killed"].returncode == -signal.SIGKILL
    last = load(runs["first_run"] / "checkpoints" / "last.ckpt")
    assert last["global_step"] == KILL_STEP - 1 == 6  # epoch 1, two of its four batches done
    assert last["global_step"] % 4 != 0
    assert not (runs["first_run"] / "metrics.json").exists()


@pytest.mark.slow  # three CLI processes, one SIGKILLed (make test-all, CI)
def test_resume_from_last_matches_the_uninterrupted_run(runs):
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    # `last` found the killed run's checkpoint although the resumed run has its own directory
    assert f"version_0{os.sep}checkpoints{os.sep}last.ckpt" in resumed.stderr + resumed.stdout

    full_last = load(runs["full_run"] / "checkpoints" / "last.ckpt")
    resumed_last = load(runs["resumed_run"] / "checkpoints" / "last.ckpt")
    assert full_last["global_step"] == resumed_last["global_step"] == 12
    assert full_last["state_dict"].keys() == resumed_last["state_dict"].keys()
    for key, value in full_last["state_dict"].items():
        assert torch.equal(value, resumed_last["state_dict"][key]), key
    for full_state, resumed_state in zip(
        full_last["optimizer_states"][0]["state"].values(),
        resumed_last["optimizer_states"][0]["state"].values(),
    ):
        assert torch.equal(full_state["exp_avg"], resumed_state["exp_avg"])

    # the same batches with the same dropout: every step's training loss, then the same metrics
    full_losses = train_losses(runs["full_run"])
    resumed_losses = train_losses(runs["resumed_run"])
    assert sorted(resumed_losses) == list(range(KILL_STEP - 1, 12))
    assert all(resumed_losses[s] == full_losses[s] for s in resumed_losses)
    assert final_val(runs["resumed_run"]) == final_val(runs["full_run"])
    assert {"val/f1_micro", "val/f1_macro", "val/loss"} <= set(final_val(runs["full_run"]))


@pytest.mark.slow  # three CLI processes, one SIGKILLed (make test-all, CI)
def test_resumed_and_uninterrupted_checkpoints_test_alike(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = []
    for run in ("full_run", "resumed_run"):
        checkpoint = runs[run] / "checkpoints" / "last.ckpt"
        test = RLRTCLI(args=["test", *runs["args"], "--ckpt_path", str(checkpoint)])
        metrics.append(test.test_metrics)
    assert metrics[0] == metrics[1]
    assert {"test/f1_micro", "test/f1_macro"} <= set(metrics[0])


@pytest.mark.slow  # three CLI processes, one SIGKILLed (make test-all, CI)
def test_resuming_never_touches_the_earlier_run(runs):
    assert snapshot(runs["first_run"]) == runs["before_resume"]
    resumed_files = snapshot(runs["resumed_run"])
    assert {"config.yaml", "metrics.csv", "checkpoints/last.ckpt"} <= set(resumed_files)


@pytest.mark.slow  # three CLI processes, one SIGKILLed (make test-all, CI)
def test_test_with_ckpt_path_last_uses_the_newest_run(runs, monkeypatch):
    monkeypatch.chdir(runs["resumed_run"].parents[2])
    before = snapshot(runs["resumed_run"].parent)
    said = []
    monkeypatch.setattr("rlrt.engine.lightning_cli.rank_zero_info", said.append)
    main(["test", *runs["args"], "--ckpt_path", "last"])
    assert said == [f"--ckpt_path last: {Path('runs/rlrt/version_1/checkpoints/last.ckpt')}"]
    after = snapshot(runs["resumed_run"].parent)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    assert any(k.startswith("version_2") and k.endswith("metrics.json") for k in after)


def test_a_run_directory_in_use_is_refused(tmp_path, monkeypatch, capsys, runs):
    """A logger with a fixed version points at an earlier run: one line, nothing written."""
    monkeypatch.chdir(runs["full_run"].parents[2])
    before = snapshot(runs["full_run"])
    fixed = tmp_path / "fixed_version.yaml"
    fixed.write_text(
        "trainer:\n  logger:\n    - class_path: lightning.pytorch.loggers.CSVLogger\n"
        "      init_args: {save_dir: runs, name: rlrt, version: 0}\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *runs["args"], "--config", str(fixed)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rlrt: error: run directory ") and "already holds" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert snapshot(runs["full_run"]) == before


# ---------------------------------------------------------------- the pieces, in isolation


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    data = list(range(20))
    first, again = EpochShuffleSampler(data, seed=3), EpochShuffleSampler(data, seed=3)
    orders = []
    for epoch in range(3):
        first.set_epoch(epoch)
        orders.append(list(first))
    again.set_epoch(2)  # a fresh process that starts at epoch 2
    assert list(again) == orders[2]
    assert orders[0] != orders[1] and sorted(orders[1]) == data
    again.set_epoch(1)
    again.start_next_at(5)
    assert list(again) == orders[1][5:]
    assert list(again) == orders[1]  # the offset applies to one iteration only


def make_loader(**kwargs) -> ResumableDataLoader:
    data = TensorDataset(torch.arange(20))
    return ResumableDataLoader(data, batch_size=4, drop_last=True, **kwargs)


def test_loader_resumes_after_the_batches_it_yielded():
    loader = make_loader(shuffle=True, generator=torch.Generator().manual_seed(7))
    loader.sampler.set_epoch(1)
    batches = [b[0].tolist() for b in loader]
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2}

    fresh = make_loader(shuffle=True, generator=torch.Generator().manual_seed(7))
    fresh.load_state_dict(state)
    assert [b[0].tolist() for b in fresh] == batches[2:]
    assert fresh.state_dict() == {"epoch": 1, "batches": 5}
    assert [b[0].tolist() for b in fresh] == batches  # the next pass is a whole epoch again


def test_loader_state_at_the_end_of_an_epoch_resumes_at_the_next_start():
    loader = make_loader(shuffle=True)
    loader.load_state_dict({"epoch": 0, "batches": len(loader)})
    assert len(list(loader)) == len(loader)


def test_loader_with_another_sampler_skips_by_drawing():
    data = TensorDataset(torch.arange(20))
    loader = ResumableDataLoader(data, batch_size=4, sampler=SequentialSampler(data))
    loader.load_state_dict({"epoch": None, "batches": 3})
    assert [b[0].tolist() for b in loader] == [[12, 13, 14, 15], [16, 17, 18, 19]]


def test_loader_never_draws_from_the_global_rng():
    loader = make_loader(shuffle=True, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), state)
    plain = DataLoader(TensorDataset(torch.arange(8)), batch_size=4)
    list(plain)  # for contrast: a plain loader draws its base seed from the global RNG
    assert not torch.equal(torch.get_rng_state(), state)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save(capture_rng_state(), path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]


class WorseningModule(LightningModule):
    """Its validation loss grows every epoch, so the best checkpoint is the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0].float()).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_last_checkpoint_is_the_latest_state_when_the_best_is_older(tmp_path):
    loader = DataLoader(TensorDataset(torch.ones(4, 1)), batch_size=2)
    callback = RunCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True)
    trainer = Trainer(
        max_epochs=3,
        logger=False,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(WorseningModule(), loader, loader)
    assert load(Path(callback.best_model_path))["global_step"] == 2  # epoch 0
    assert load(tmp_path / "last.ckpt")["global_step"] == 6  # the end, not a copy of the best


def test_resumed_checkpoint_callback_keeps_the_best_score(tmp_path):
    old = RunCheckpoint(dirpath=tmp_path / "version_0", monitor="val/loss", mode="min")
    old.best_model_score = torch.tensor(0.25)
    old.best_model_path = str(tmp_path / "version_0" / "best.ckpt")
    old.best_k_models = {old.best_model_path: old.best_model_score}
    new = RunCheckpoint(dirpath=tmp_path / "version_1", monitor="val/loss", mode="min")
    new.load_state_dict(old.state_dict())
    assert new.best_model_score == 0.25 and new.best_model_path == old.best_model_path
    assert new.dirpath == str(tmp_path / "version_1")  # still writes into its own directory


def test_a_checkpoint_of_another_world_size_resumes_with_rank_0s_rng_and_says_so():
    import warnings
    from types import SimpleNamespace

    from rlrt.engine.resume import ExactResume

    torch.manual_seed(1)
    rank0 = capture_rng_state()
    after0 = torch.rand(3)
    torch.manual_seed(2)
    rank1 = capture_rng_state()
    after1 = torch.rand(3)
    saved = {"rng": rank0, "train_loader": None, "rng_by_rank": [rank0, rank1]}

    def resume(world_size, global_rank):
        trainer = SimpleNamespace(
            state=SimpleNamespace(fn="fit"),
            train_dataloader=None,
            world_size=world_size,
            global_rank=global_rank,
        )
        callback = ExactResume()
        callback.load_state_dict(saved)
        callback.on_train_start(trainer, None)
        return torch.rand(3)

    with pytest.warns(UserWarning, match="written by 2 process"):
        assert torch.equal(resume(world_size=1, global_rank=0), after0)  # rank 0's stream
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(resume(world_size=2, global_rank=1), after1)  # its own, silently
