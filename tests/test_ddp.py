"""Lightning DDP on 2 CPU processes (gloo): the same metrics and the same cache as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import demo_args

RLRT = [sys.executable, "-m", "rlrt.cli"]
DDP = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]


def run(args, cwd):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(
        [*RLRT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
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
    # L_CCA is a batch statistic (each process sees half of every batch), so test/cca and
    # test/loss legitimately differ; the classification metrics and the task loss must not.
    for key in ("test/f1_micro", "test/f1_macro", "test/task_loss"):
        np.testing.assert_allclose(distributed[key], single[key], rtol=1e-5, atol=1e-6)

    run(["cache", *args, f"--data.init_args.feature_cache={tmp_path / 'one'}"], tmp_path)
    run(["cache", *args, *DDP, f"--data.init_args.feature_cache={tmp_path / 'two'}"], tmp_path)
    for split in ("train", "val", "test"):
        one, two = tmp_path / "one" / split, tmp_path / "two" / split
        assert json.loads((one / "manifest.json").read_text()) == json.loads(
            (two / "manifest.json").read_text()
        )
        for name in ("image_tokens", "image_embedding", "text_tokens", "text_mask"):
            np.testing.assert_array_equal(
                np.load(two / f"{name}.npy"), np.load(one / f"{name}.npy")
            )

    # and a DDP fit runs end to end from that cache
    run(["fit", *args, *DDP, f"--data.init_args.feature_cache={tmp_path / 'two'}"], tmp_path)
