"""Adversarial round three, the cases that need real processes: Ctrl-C (SIGINT) during
`rlrt cache` and the same command again; two `rlrt fit` started at once into one logger
directory (both listing it before either has created its run directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from lightning import Callback
from lightning.pytorch.loggers import CSVLogger

from data_modules import DemoMMIMDBDataModule
from rlrt.cache.reader import SplitCacheReader, verify_split
from rlrt.engine.checkpoints import read_checkpoint
from rlrt.engine.errors import INTERRUPTED
from tests.test_cli_errors import demo_args
from tests.test_resume import REPO, run_rlrt

INTERRUPT_BATCH = 5  # of 14 batches of 4 (28 training posters, then their 28 plots)


class InterruptAtBatch(Callback):
    """Send this process SIGINT (Ctrl-C) when predict batch `batch` starts."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


def rendezvous(folder: Path, parties: int = 2, timeout: float = 300.0) -> None:
    """Wait until `parties` processes have called this with `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(list(folder.iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.01)


class SlowListingCSVLogger(CSVLogger):
    """Lightning's CSVLogger on a slow file system: having listed the folder to choose the next
    free version, it waits until the other run has listed it too (both see the same versions)."""

    def __init__(self, *args, meet: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.meet = Path(meet)

    def _get_next_version(self) -> int:
        version = super()._get_next_version()
        rendezvous(self.meet)
        return version


def rlrt_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rlrt")]


# ------------------------------------------------------------------ Ctrl-C during `rlrt cache`


@pytest.fixture(scope="module")
def interrupted_cache(tmp_path_factory, tiny_vit_config, tiny_llama_dir):
    """`rlrt cache` sent SIGINT at a predict batch, the same command again, and an uninterrupted
    build of the same split (subprocesses)."""
    base = tmp_path_factory.mktemp("sigint_cache")
    args = [*demo_args(base, tiny_vit_config, tiny_llama_dir), "--splits=train", "--batch_size=4"]
    cache = base / "cache"
    interrupt = {
        "class_path": "tests.test_adversarial_processes.InterruptAtBatch",
        "init_args": {"batch": INTERRUPT_BATCH},
    }
    command = ["cache", *args, f"--data.init_args.feature_cache={cache}"]
    stopped = run_rlrt([*command, f"--trainer.callbacks+={json.dumps(interrupt)}"], base)
    after_stop = {
        "files": sorted(p.name for p in (cache / "train").iterdir()),
        "done": [np.load(cache / "train" / f"{k}_done.npy") for k in ("image", "text")],
    }
    try:
        SplitCacheReader(cache / "train")
        after_stop["opens"] = None
    except FileNotFoundError as refused:
        after_stop["opens"] = str(refused)
    again = run_rlrt(command, base)
    full = run_rlrt(["cache", *args, f"--data.init_args.feature_cache={base / 'full'}"], base)
    assert full.returncode == 0, full.stderr[-3000:]
    return stopped, after_stop, again, cache, base / "full"


@pytest.mark.slow  # CLI processes, one sent SIGINT (make test-all, CI)
def test_ctrl_c_during_rlrt_cache_is_one_line_and_exit_130(interrupted_cache):
    stopped, _, _, cache, _ = interrupted_cache
    assert stopped.returncode == INTERRUPTED == 130, stopped.stderr[-3000:]
    output = stopped.stdout + stopped.stderr
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert rlrt_lines(stopped.stderr) == [
        f"rlrt: interrupted (Ctrl-C); the feature cache {cache} is not complete; run the same "
        "command again to finish it (the rows already written are kept)"
    ]
    assert stopped.stderr.rstrip().endswith(rlrt_lines(stopped.stderr)[0])


@pytest.mark.slow  # CLI processes, one sent SIGINT (make test-all, CI)
def test_an_interrupted_cache_does_not_look_complete(interrupted_cache):
    _, after_stop, _, _, _ = interrupted_cache
    assert "manifest.json" not in after_stop["files"]  # written last, only when complete
    assert after_stop["opens"] is not None and "not complete" in after_stop["opens"]
    done = np.concatenate(after_stop["done"])
    assert 0 < done.sum() < done.size  # stopped part-way, the rows written before kept


@pytest.mark.slow  # CLI processes, one sent SIGINT (make test-all, CI)
def test_the_same_command_again_finishes_the_cache(interrupted_cache):
    _, _, again, cache, full = interrupted_cache
    assert again.returncode == 0, again.stderr[-3000:]
    resumed, reference = verify_split(cache / "train"), verify_split(full / "train")
    assert resumed.ids == reference.ids and len(resumed) == 28
    for name in ("image_embedding", "image_tokens", "text_embedding", "text_tokens", "text_mask"):
        ours = np.load(cache / "train" / f"{name}.npy").astype(np.float32)
        theirs = np.load(full / "train" / f"{name}.npy").astype(np.float32)
        # other batches than the uninterrupted build's: equal up to float16 rounding
        np.testing.assert_allclose(ours, theirs, rtol=1e-2, atol=1e-3, err_msg=name)


# ------------------------------------------------------------- two `rlrt fit` at once, one folder


@pytest.mark.slow  # two CLI fits at once (make test-all, CI)
def test_two_fits_started_at_once_into_one_logger_directory_keep_their_own_runs(
    tmp_path, tiny_vit_config, tiny_llama_dir
):
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir)
    DemoMMIMDBDataModule(root=str(tmp_path / "demo_data"), num_movies=40).prepare_data()
    logger = {
        "class_path": "tests.test_adversarial_processes.SlowListingCSVLogger",
        "init_args": {"save_dir": "results/demo/runs", "name": "rlrt", "meet": str(tmp_path / "m")},
    }
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "rlrt.cli", "fit", *args, f"--seed_everything={seed}"]
            + [f"--trainer.logger=[{json.dumps(logger)}]"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    done = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, done):
        assert run.returncode == 0, err[-3000:]
    root = tmp_path / "results" / "demo" / "runs" / "rlrt"
    run_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(run_dirs) == 2  # one each; none shared, none refused
    seeds = set()
    for run_dir in run_dirs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        seeds.add(config["seed_everything"])
        checkpoint = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")  # intact
        assert checkpoint["global_step"] > 0
        logged = (run_dir / "metrics.csv").read_text().splitlines()
        assert len(logged) > 1 and logged[0].startswith("epoch,step")
        assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.csv", "checkpoints"}
    assert seeds == {1, 2}


# ------------------------------------------------- `rlrt cache` onto a real read-only mount


def read_only_mount_command(folder: Path) -> list[str] | None:
    """A command prefix that runs what follows with a read-only tmpfs mounted on `folder`, in a
    mount namespace of its own (`unshare`, as an unprivileged user where the kernel allows
    user namespaces); None where that cannot be had here."""
    prefix = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o ro tmpfs "{folder}" && exec "$@"']
    try:
        probe = subprocess.run([*prefix, "sh", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [*prefix, "sh"] if probe.returncode == 0 else None


def test_rlrt_cache_onto_a_real_read_only_mount(tmp_path, tiny_vit_config, tiny_llama_dir):
    folder = tmp_path / "mounted"
    folder.mkdir()
    prefix = read_only_mount_command(folder)
    if prefix is None:
        pytest.skip("no read-only mount can be made here (unshare/mount not permitted)")
    args = [*demo_args(tmp_path, tiny_vit_config, tiny_llama_dir), "--splits=train"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlrt.cli", "cache", *args]
    done = subprocess.run(
        [*prefix, *command, f"--data.init_args.feature_cache={folder / 'cache'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert rlrt_lines(done.stderr) == [
        f"rlrt: error: feature cache folder {folder / 'cache'} is not writable (Read-only file "
        f"system: {folder / 'cache'}); make it writable or give another folder as "
        "--data.init_args.feature_cache (or --cache_dir)"
    ]
    assert list(folder.iterdir()) == []  # outside the namespace: the folder as it was
