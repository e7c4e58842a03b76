"""Two trainings from one feature cache with one seed give the same metrics, to the last bit.

This is what makes the demo's numbers reproducible on one machine: the only thing left to differ
between machines is the floating-point arithmetic of the CPU's kernels (README, "Quick start").
The head is the demo's (`configs/model/demo.yaml`: d_c 32, four layer pairs, the demo's trainer
with `deterministic: true`); the encoders are the tests' tiny ones, so that the cache takes seconds.
"""

from pathlib import Path

import torch

from rlrt.commands.cache import run_cache
from rlrt.engine.lightning_cli import RLRTCLI
from tests.test_cli import demo_args


def fit_and_test(args: list[str], seed: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Fit with `seed`, test the best checkpoint: (test metrics, the checkpoint's weights)."""
    seeded = [*args, f"--seed_everything={seed}"]
    fit = RLRTCLI(args=["fit", *seeded])
    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    test = RLRTCLI(args=["test", *seeded, "--verbose=false", "--ckpt_path", checkpoint])
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return dict(test.test_metrics), weights


def test_two_trainings_from_one_cache_with_one_seed_are_identical(
    tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir
):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    args = [
        *demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=96),
        "--data.init_args.batch_size=32",
        "--trainer.max_epochs=3",
        f"--data.init_args.feature_cache={cache}",
    ]
    run_cache(args)
    first_metrics, first_weights = fit_and_test(args, seed=0)
    second_metrics, second_weights = fit_and_test(args, seed=0)
    other_metrics, other_weights = fit_and_test(args, seed=1)

    assert {"test/f1_macro", "test/f1_micro", "test/cca_corr", "test/loss"} <= set(first_metrics)
    assert first_metrics == second_metrics  # exactly, not within a tolerance
    assert first_weights.keys() == second_weights.keys()
    for name, value in first_weights.items():
        assert torch.equal(value, second_weights[name]), name
    # the comparison can fail: another seed trains other weights and scores another loss
    assert any(not torch.equal(v, other_weights[k]) for k, v in first_weights.items())
    assert other_metrics["test/loss"] != first_metrics["test/loss"]
    assert (
        len(list(Path(tmp_path, "results/demo/runs/rlrt").glob("version_*"))) == 6
    )  # 3 fits, 3 tests
