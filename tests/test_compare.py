"""`rlrt compare`: variants x training seeds, each fitted and run through the robustness grid."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from rlrt.cli import main
from rlrt.commands.compare import run_compare
from tests.test_cli import CONFIGS, demo_args


@pytest.mark.slow  # variants x seeds of fits and grids (make test-all, CI)
def test_compare_fits_each_variant_and_seed_and_pools_them(
    tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir
):
    monkeypatch.chdir(tmp_path)
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=40)
    args += ["--trainer.max_epochs=1"]
    output = tmp_path / "compare"
    frame = run_compare(
        [
            *args,
            "--variants=full,late_fusion",
            f"--variants_dir={CONFIGS / 'model' / 'variants'}",
            "--train_seeds=0,1",
            f"--output={output}",
            "--rates=0,1",
            "--types=image",
            "--noise_levels=10",
            "--noise_modalities=text",
        ]
    )
    assert list(dict.fromkeys(frame["model"])) == ["full", "late_fusion"]
    # two training seeds give two checkpoints per variant, each from its own fit
    checkpoints = frame.groupby("model")["checkpoint"].nunique()
    assert checkpoints.to_dict() == {"full": 2, "late_fusion": 2}
    assert frame["checkpoint"].nunique() == 4
    # the combined files are exactly the per-run files stacked
    parts = [
        pd.read_csv(output / "runs" / v / f"seed{s}" / "robustness.csv", keep_default_na=False)
        for v in ("full", "late_fusion")
        for s in (0, 1)
    ]
    combined = pd.read_csv(output / "robustness.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(combined, pd.concat(parts, ignore_index=True))
    text = (output / "robustness.md").read_text()
    assert "| F1-macro (%) | complete | no image | text noise 10 |" in re.sub(r" {2,}", " ", text)
    assert "Checkpoints per model: RLRT: 2, late fusion: 2" in text
    assert (output / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    # one feature cache serves both variants (same data and encoders)
    assert len(list((output / "runs" / "cache").iterdir())) == 1


def test_compare_refuses_an_unknown_variant_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "compare",
                "--variants=full,no_such_thing",
                f"--variants_dir={CONFIGS / 'model' / 'variants'}",
                f"--output={tmp_path / 'out'}",
            ]
        )
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no_such_thing.yaml" in error[0] and "late_fusion" in error[0]
    assert not (tmp_path / "out").exists()
