"""`rlrt shared-fraction` (`make evidence-shared`): cells fitted once, a cut run resumed, the CSV's
schema; the late-fusion-with-dropout baseline config."""

from __future__ import annotations

import pandas as pd
import pytest

import rlrt.commands.shared_fraction as study
from rlrt.cli import main
from rlrt.engine.lightning_cli import parse_only
from rlrt.reports.shared_fraction import COLUMNS, SETTINGS, differences, summarize
from tests.test_cli import CONFIGS, demo_args

VARIANTS = CONFIGS / "model" / "variants"


def test_late_fusion_dropout_is_late_fusion_with_the_same_dropout():
    base = [
        a
        for c in ("trainer/demo", "data/demo", "model/demo")
        for a in ("--config", str(CONFIGS / f"{c}.yaml"))
    ]

    def model(variant):
        return parse_only([*base, "--config", str(VARIANTS / f"{variant}.yaml")]).model.as_dict()

    baseline, dropout = model("late_fusion"), model("late_fusion_dropout")
    rlrt_dropout = model("modality_dropout")
    assert dropout["modality_dropout"] == rlrt_dropout["modality_dropout"] > 0
    assert baseline["modality_dropout"] == 0.0
    # everything else is late fusion's
    different = {k for k in baseline if baseline[k] != dropout[k]}
    assert different == {"modality_dropout"}
    assert dropout["use_robust"] is False and dropout["beta"] == 0.0


@pytest.fixture()
def run_args(tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir):
    monkeypatch.chdir(tmp_path)
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=40)
    return [
        *args,
        "--trainer.max_epochs=1",
        "--fractions=0,1",
        "--variants=full,late_fusion_dropout",
        f"--variants_dir={VARIANTS}",
        "--train_seeds=0",
        "--seeds=0,1",
        f"--output={tmp_path / 'evidence'}",
        f"--workdir={tmp_path / 'work'}",
        f"--data_root={tmp_path / 'data'}",
    ]


def counting(monkeypatch) -> list[tuple]:
    """Record the cells `run_shared_fraction` fits (the real `run_cell` still runs)."""
    calls, real = [], study.run_cell

    def run_cell(*args, **kwargs):
        calls.append((kwargs["fraction"], kwargs["variant"], kwargs["seed"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "run_cell", run_cell)
    return calls


@pytest.mark.slow  # the study end to end, run twice (make test-all, CI)
def test_study_fits_each_cell_once_and_resumes_a_cut_run(run_args, tmp_path, monkeypatch, capsys):
    calls = counting(monkeypatch)
    frame = study.run_shared_fraction(run_args)
    cells = [(0.0, "full", 0), (0.0, "late_fusion_dropout", 0), (1.0, "full", 0)]
    cells.append((1.0, "late_fusion_dropout", 0))
    assert calls == cells
    out = tmp_path / "evidence"
    written = pd.read_csv(out / "shared_fraction.csv", keep_default_na=False)
    assert list(written.columns) == COLUMNS
    pd.testing.assert_frame_equal(written, frame.reset_index(drop=True), check_dtype=False)
    # one row per model, fraction, setting, training seed, protocol seed and metric
    assert not written.duplicated(
        ["model", "shared_fraction", "setting", "train_seed", "seed", "metric"]
    ).any()
    f1 = written[written["metric"] == "f1_macro"]
    assert len(f1) == 4 * len(SETTINGS) * 2 and set(f1["setting"]) == set(SETTINGS)
    assert set(written["shared_fraction"]) == {0.0, 1.0}
    assert dict(zip(written["shared_fraction"], written["shared_genres"])) == {0.0: 0, 1.0: 23}
    # held-out alignment only where there is a MoLT to align
    cca = written[written["metric"] == "cca_corr"]
    assert set(cca["model"]) == {"full"} and "complete" in set(cca["setting"])
    # one dataset and one feature cache per fraction, shared by both models
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shared_0", "shared_1"]
    assert len(list((tmp_path / "work" / "cache").iterdir())) == 2
    text = (out / "shared_fraction.md").read_text()
    assert "Partial" not in text and "late fusion + modality dropout" in text
    assert "Every model: 1 epochs" in text and "dropout: late_fusion_dropout 0.3." in text
    assert (out / "shared_fraction.png").read_bytes()[:4] == b"\x89PNG"

    # a second run fits nothing
    calls.clear()
    again = study.run_shared_fraction(run_args)
    assert calls == []
    assert "done before, skipped" in capsys.readouterr().out
    pd.testing.assert_frame_equal(again, frame)

    # a run cut inside the third cell: its leftovers are redone, the other cells kept
    cut = tmp_path / "work" / "shared_1" / "full" / "seed0"
    (cut / "cell.csv").unlink()
    (cut / "fit" / "junk").mkdir(parents=True, exist_ok=True)
    kept = (tmp_path / "work" / "shared_0" / "full" / "seed0" / "cell.csv").stat().st_mtime_ns
    resumed = study.run_shared_fraction(run_args)
    assert calls == [(1.0, "full", 0)]
    assert not (cut / "fit" / "junk").exists()
    assert (
        tmp_path / "work" / "shared_0" / "full" / "seed0" / "cell.csv"
    ).stat().st_mtime_ns == kept
    pd.testing.assert_frame_equal(resumed, frame)  # deterministic training: the same numbers


def test_a_partial_report_says_so(run_args, tmp_path, monkeypatch):
    real = study.run_cell

    def cut_after_one(*args, **kwargs):
        if (tmp_path / "work" / "shared_0" / "full" / "seed0" / "cell.csv").is_file():
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "run_cell", cut_after_one)
    with pytest.raises(KeyboardInterrupt):
        study.run_shared_fraction(run_args)
    text = (tmp_path / "evidence" / "shared_fraction.md").read_text()
    assert "**Partial results: 1 of 4 trained models.**" in text
    assert set(pd.read_csv(tmp_path / "evidence" / "shared_fraction.csv")["model"]) == {"full"}


def test_summary_averages_protocol_seeds_then_training_seeds():
    rows = []
    for model, base in (("full", 0.5), ("late_fusion", 0.6)):
        for train_seed, shift in ((0, 0.0), (1, 0.1)):
            for seed, noise in ((0, 0.02), (1, -0.02)):
                rows.append(
                    {
                        "model": model,
                        "shared_fraction": 0.5,
                        "shared_genres": 12,
                        "setting": "no image",
                        "train_seed": train_seed,
                        "seed": seed,
                        "metric": "f1_macro",
                        "value": base + shift + noise,
                    }
                )
    stats = summarize(pd.DataFrame(rows, columns=COLUMNS)).set_index("model")
    # per checkpoint: base, base + 0.1; mean and sample std over the two checkpoints
    assert stats.loc["full", "mean"] == pytest.approx(0.55)
    assert stats.loc["full", "std"] == pytest.approx(pd.Series([0.5, 0.6]).std())
    assert (stats["n"] == 2).all()
    delta = differences(summarize(pd.DataFrame(rows, columns=COLUMNS)))
    assert delta["delta"].tolist() == pytest.approx([-0.1])
    sd = pd.Series([0.5, 0.6]).std()  # both models' spread over their two checkpoints
    assert delta["se"].tolist() == pytest.approx([(sd**2 / 2 + sd**2 / 2) ** 0.5])


@pytest.mark.parametrize(
    "option,match",
    [
        ("--fractions=0,1.5", "--fractions"),
        ("--fractions=a", "--fractions"),
        ("--train_seeds=x", "--train_seeds"),
    ],
)
def test_bad_options_are_one_line_before_anything_runs(tmp_path, capsys, option, match):
    with pytest.raises(SystemExit) as exit_info:
        main(["shared-fraction", option, f"--output={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and match in error[0]
    assert not (tmp_path / "out").exists()
