"""Lightning DDP on 2 CPU processes (gloo): the same metrics and the same cache as one process."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cache_equality import assert_same_cache
from tests.test_cli import demo_args
from tests.test_resume import REPO, fit_args, load

RLRT = [sys.executable, "-m", "rlrt.cli"]
# Each test starts several multi-process runs: `make test-all` and CI run them, `make test` not.
pytestmark = pytest.mark.slow

DDP = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]


def rlrt_env(**extra: str) -> dict[str, str]:
    """Offline, one thread per process (two processes on two cores), this checkout importable
    (the test callbacks live in `tests/`)."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        **extra,
    }


def run(args, cwd, check=True):
    """`rlrt ARGS` in a session of its own: a kill of its process group takes every rank it
    started, and nothing else."""
    done = subprocess.run(
        [*RLRT, *args],
        cwd=cwd,
        env=rlrt_env(),
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def newest_metrics(cwd: Path) -> dict:
    runs = sorted(
        (cwd / "results/demo/runs/rlrt").glob("version_*"), key=lambda p: int(p.name.split("_")[1])
    )
    return json.loads((runs[-1] / "metrics.json").read_text())


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_ddp_test_metrics_and_cache_match_a_single_process(
    tmp_path, tiny_vit_config, tiny_llama_dir
):
    # 60 movies: a test split of 12, even, so DistributedSampler pads nothing
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=60)
    run(["fit", *args], tmp_path)
    checkpoint = next((tmp_path / "results/demo/runs/rlrt/version_0/checkpoints").glob("last.ckpt"))

    run(["test", *args, f"--ckpt_path={checkpoint}"], tmp_path)
    single = newest_metrics(tmp_path)
    run(["test", *args, *DDP, f"--ckpt_path={checkpoint}"], tmp_path)
    distributed = newest_metrics(tmp_path)
    assert set(single) == set(distributed)
    # cca_corr rests on statistics summed over the processes: the whole split either way.
    for key in ("test/f1_micro", "test/f1_macro", "test/task_loss", "test/cca_corr"):
        np.testing.assert_allclose(distributed[key], single[key], rtol=1e-5, atol=1e-6)

    run(["cache", *args, f"--data.init_args.feature_cache={tmp_path / 'one'}"], tmp_path)
    run(["cache", *args, *DDP, f"--data.init_args.feature_cache={tmp_path / 'two'}"], tmp_path)
    assert_same_cache(tmp_path / "one", tmp_path / "two")

    # and a DDP fit runs end to end from that cache
    run(["fit", *args, *DDP, f"--data.init_args.feature_cache={tmp_path / 'two'}"], tmp_path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_two_nodes_build_the_same_cache_as_one_process(tmp_path, tiny_vit_config, tiny_llama_dir):
    """Two "nodes" of one device each, started by hand as on a cluster (NODE_RANK, MASTER_ADDR,
    MASTER_PORT), sharing the cache folder's filesystem: one manifest per split, arrays equal to a
    single-process build."""
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=40)
    # (the single-process build also generates the demo data, before both nodes read it)
    run(["cache", *args, f"--data.init_args.feature_cache={tmp_path / 'one'}"], tmp_path)
    nodes = [
        "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp",
        "--trainer.devices=1",
        "--trainer.num_nodes=2",
    ]
    command = [*RLRT, "cache", *args, *nodes, f"--data.init_args.feature_cache={tmp_path / 'two'}"]
    port = str(free_port())
    processes = []
    for node in (0, 1):
        env = rlrt_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node))
        processes.append(
            subprocess.Popen(
                command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    texts_by_node = []
    for process in processes:
        output, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors.decode()[-3000:]
        line = next(x for x in output.decode().splitlines() if "rlrt cache: train: rank" in x)
        texts_by_node.append(int(line.split(" and ")[1].split()[0]))
    # each node encoded its own shard of the training texts (DistributedSampler pads by one)
    total = len(json.loads((tmp_path / "one" / "train" / "ids.json").read_text()))
    assert min(texts_by_node) >= total // 2 and sum(texts_by_node) in (total, total + 1)
    assert_same_cache(tmp_path / "one", tmp_path / "two")


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_ddp_fit_killed_mid_epoch_resumes_exactly(tmp_path, tiny_vit_config, tiny_llama_dir):
    """Both ranks SIGKILLed mid-epoch, then `--ckpt_path last`: the same final weights as an
    uninterrupted 2-process run (each rank gets its own RNG states back, e.g. for dropout)."""
    args = [
        *fit_args(tmp_path, tiny_vit_config, tiny_llama_dir),
        *DDP,
        "--data.init_args.batch_size=4",
        "--trainer.callbacks.init_args.every_n_train_steps=3",
        "--trainer.callbacks+=tests.kill_callback.DesyncRanks",
    ]
    full, broken = tmp_path / "full", tmp_path / "broken"
    full.mkdir()
    broken.mkdir()
    kill = {"class_path": "tests.kill_callback.KillAtStep", "init_args": {"step": 7, "group": True}}
    killed = run(["fit", *args, f"--trainer.callbacks+={json.dumps(kill)}"], broken, check=False)
    assert killed.returncode == -signal.SIGKILL
    run(["fit", *args, "--ckpt_path", "last"], broken)
    run(["fit", *args], full)

    interrupted = load(broken / "runs/rlrt/version_0/checkpoints/last.ckpt")
    resumed = load(broken / "runs/rlrt/version_1/checkpoints/last.ckpt")
    uninterrupted = load(full / "runs/rlrt/version_0/checkpoints/last.ckpt")
    steps_per_epoch = uninterrupted["global_step"] // 3  # max_epochs: 3
    assert interrupted["global_step"] == 6 and 6 % steps_per_epoch != 0  # killed mid-epoch
    rank0, rank1 = interrupted["callbacks"]["ExactResume"]["rng_by_rank"]
    assert not torch.equal(rank0["torch"], rank1["torch"])  # the ranks' streams differ
    assert resumed["global_step"] == uninterrupted["global_step"]
    for key, value in uninterrupted["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


def _running_cca_rank(rank: int, port: int, folder: str) -> None:
    """One process of `test_running_cca_statistics_are_shared_by_the_processes`."""
    import torch.distributed as dist

    from rlrt.losses import RunningCCALoss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        loss = RunningCCALoss(num_layers=1, dim=4, window=96, warmup_samples=0)
        values = []
        for step in range(6):
            x, y = _running_cca_batch(step)  # (1, 32, 4): rank r sees rows [16 r, 16 r + 16)
            half = slice(16 * rank, 16 * rank + 16)
            if rank == 1 and step == 2:
                half = slice(0, 0)  # a step where this process has no sample with both inputs
            values.append(loss(x[:, half], y[:, half]).item())
        torch.save({"state": loss.state_dict(), "values": values}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _running_cca_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    shared = torch.randn(1, 32, 4, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 1, 32, 4, generator=generator, dtype=torch.float64)
    return shared + noise[0], shared + 0.5 * noise[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_running_cca_statistics_are_shared_by_the_processes(tmp_path):
    """Under DDP every process folds every process's batch into its running covariances: both
    hold the statistics one process would hold after seeing the whole global batches (also on a
    step where one process has nothing to add), so the loss value is the same on both."""
    import torch.multiprocessing as mp

    from rlrt.losses import RunningCCALoss

    mp.start_processes(
        _running_cca_rank, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    single = RunningCCALoss(num_layers=1, dim=4, window=96, warmup_samples=0)
    expected = []
    for step in range(6):
        x, y = _running_cca_batch(step)
        rows = slice(0, 16) if step == 2 else slice(0, 32)
        expected.append(single(x[:, rows], y[:, rows]).item())
    for rank in ranks:
        for key, value in single.state_dict().items():
            torch.testing.assert_close(rank["state"][key], value)
    np.testing.assert_allclose(ranks[0]["values"], expected, rtol=1e-10)
    # the process without samples on step 2 has no gradient to give there: its loss is 0
    assert ranks[1]["values"][2] == 0.0
    others = [v for i, v in enumerate(ranks[1]["values"]) if i != 2]
    np.testing.assert_allclose(others, [v for i, v in enumerate(expected) if i != 2], rtol=1e-10)
