"""`rlrt robustness` and its report, end to end on a tiny checkpoint, plus the grid logic."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from rlrt.cli import main
from rlrt.commands.cache import run_cache
from rlrt.commands.robustness import Setting, build_grid, evaluate_grid
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.reports.robustness import COLUMNS, headline, markdown, read_results, summarize
from tests.test_cli import demo_args


def test_the_default_grid_and_its_callbacks():
    grid = build_grid(
        rates=[r / 10 for r in range(11)],
        types=["image", "text", "both"],
        levels=list(range(11)),
        modalities=["image", "text"],
        seeds=[0, 1],
    )
    assert len(grid) == 2 * (3 * 11 + 2 * 11)
    assert Setting("missing", "both", 0.0, 0).callback("zero", 0.5) is None  # clean
    missing = Setting("missing", "both", 0.7, 3).callback("zero", 0.5)
    assert missing == {
        "class_path": "callbacks.MissingModality",
        "init_args": {"eval_rate": 0.7, "eval_type": "both", "seed": 3, "strategy": "zero"},
    }
    noise = Setting("noise", "text", 4.0, 1).callback(None, 0.5)
    assert noise["class_path"] == "callbacks.ModalityNoise"
    assert noise["init_args"] == {"text_level": 4.0, "seed": 1, "fraction": 0.5}


def test_evaluate_grid_records_each_setting_and_its_protocol():
    seen = []

    def evaluate(setting):
        seen.append(setting)
        source = "online" if setting.perturbation == "noise" else "cache"
        metrics = {"test/f1_macro": 1.0 - setting.amount / 10, "test/loss": 9.0}
        metrics["test/cca_corr"] = float("nan") if setting.amount == 5 else 0.5
        metrics["test/cca_corr_layer0"] = 0.5
        return metrics, source

    grid = build_grid(
        rates=[0.0, 0.5], types=["image", "text"], levels=[0, 5], modalities=["image"], seeds=[0, 1]
    )
    frame = evaluate_grid(
        grid, evaluate, strategy="dummy", fraction=0.5, model="m", checkpoint="c", progress=False
    )
    assert seen == grid
    assert list(frame.columns) == COLUMNS
    # losses and per-layer correlations are not results; a NaN has no row
    assert set(frame["metric"]) == {"f1_macro", "cca_corr"}
    assert (frame["metric"] == "f1_macro").sum() == len(grid)
    cca = frame[frame["metric"] == "cca_corr"]
    assert len(cca) == sum(s.amount != 5 for s in grid) and set(cca["value"]) == {0.5}
    row = frame[(frame["missing_type"] == "text") & (frame["missing_rate"] == 0.5)].iloc[0]
    assert row["value"] == 0.95 and row["missing_strategy"] == "dummy" and row["noise_level"] == 0
    assert row["features"] == "cache" and row["noise_modality"] == ""
    noise = frame[(frame["perturbation"] == "noise") & (frame["noise_level"] == 5)]
    assert noise["value"].tolist() == [0.5, 0.5] and set(noise["features"]) == {"online"}


def test_report_means_and_stds_over_seeds():
    rows = [
        result_row(missing_rate=0.3, seed=seed, metric="acc", value=value)
        for seed, value in ((0, 0.5), (1, 0.7))
    ]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    stats = summarize(frame)
    assert len(stats) == 1
    assert stats["mean"].item() == pytest.approx(0.6)
    assert stats["std"].item() == pytest.approx(pd.Series([0.5, 0.7]).std())
    assert "| 30 | 60.0 ± 14.1 |" in squeeze(markdown(frame))


def squeeze(text: str) -> str:
    """A padded Markdown table with runs of spaces made one (cells keep their own spaces)."""
    return re.sub(r" {2,}", " ", text)


def result_row(**fields):
    row = dict(
        model="m",
        checkpoint="c",
        perturbation="missing",
        missing_type="both",
        missing_rate=0.0,
        noise_modality="",
        noise_level=0.0,
        noise_fraction=0.5,
        missing_strategy="dummy",
        features="online",
        seed=0,
        metric="f1_macro",
        value=0.0,
    )
    return {**row, **fields}


def test_headline_pools_checkpoints_and_seeds_per_model_and_setting():
    rows = []
    for model, base in (("rlrt", 0.50), ("late", 0.40)):
        for checkpoint, shift in (("a", 0.0), ("b", 0.02)):  # two training seeds
            for seed in (0, 1):
                common = dict(model=model, checkpoint=checkpoint, seed=seed)
                rows.append(result_row(**common, value=base + shift))
                rows.append(
                    result_row(**common, missing_type="image", missing_rate=0.7, value=base - 0.1)
                )
                rows.append(
                    result_row(
                        **common,
                        perturbation="noise",
                        missing_type="",
                        noise_modality="text",
                        noise_level=10.0,
                        value=base - 0.2 + shift,
                    )
                )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    table = squeeze(headline(frame))
    spread = 100 * pd.Series([0.5, 0.5, 0.52, 0.52]).std()
    assert table.splitlines()[0] == (
        "| F1-macro (%) | complete | 70% image missing | text noise 10 |"
    )
    assert f"| RLRT | 51.0 ± {spread:.1f} | 40.0 ± 0.0 | 31.0 ± {spread:.1f} |" in table
    assert f"| late | 41.0 ± {spread:.1f} | 30.0 ± 0.0 | 21.0 ± {spread:.1f} |" in table
    assert "Checkpoints per model: RLRT: 2, late: 2" in markdown(frame)


@pytest.mark.slow  # a fit, then the whole grid online and cached (make test-all, CI)
def test_robustness_end_to_end(tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir):
    monkeypatch.chdir(tmp_path)
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=40)
    args += ["--trainer.max_epochs=1", f"--data.init_args.feature_cache={tmp_path / 'cache'}"]
    run_cache(args)
    fit = RLRTCLI(args=["fit", *args])
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    out = tmp_path / "robust"
    # no --config: the checkpoint's own run config is used
    main(
        [
            "robustness",
            "--ckpt_path",
            checkpoint,
            "--output",
            str(out),
            "--name",
            "tiny",
            "--rates",
            "0,0.5,1",
            "--noise_levels",
            "0,10",
            "--seeds",
            "0,1",
        ]
    )
    frame = pd.read_csv(out / "robustness.csv", keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    scores = frame[~frame["metric"].str.startswith("cca_corr")]  # and its noise floor
    assert set(scores["metric"]) == {"f1_micro", "f1_macro"}
    assert len(scores) == 2 * 2 * (3 * 3 + 2 * 2)  # seeds x metrics x (missing + noise points)
    assert frame[frame["metric"] == "cca_corr"]["value"].between(-1, 1).all()  # out of sample
    assert set(frame["model"]) == {"tiny"}
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "robustness.md").read_text()
    assert "### F1-macro, image or text missing" in report and "### F1-micro, text noise" in report
    # missing modalities from the feature cache; noise needs raw inputs: evaluated online
    assert set(frame[frame["perturbation"] == "missing"]["features"]) == {"cache"}
    assert set(frame[frame["perturbation"] == "noise"]["features"]) == {"online"}

    # independent path: an ordinary `rlrt test` with the callback gives the same numbers
    def value(**where):
        sel = frame
        for k, v in where.items():
            sel = sel[sel[k] == v]
        return sel["value"].tolist()

    callback = {
        "class_path": "callbacks.MissingModality",
        "init_args": {"eval_rate": 1.0, "eval_type": "image", "seed": 1},
    }
    test = RLRTCLI(
        args=[
            "test",
            *args,
            "--ckpt_path",
            checkpoint,
            f"--trainer.callbacks+={json.dumps(callback)}",
        ]
    )
    direct = test.test_metrics["test/f1_macro"]
    recorded = json.loads((Path(test.trainer.log_dir) / "protocol.json").read_text())
    assert recorded["missing_eval_rate"] == 1.0 and recorded["missing_eval_type"] == "image"
    assert recorded["missing_seed"] == 1 and recorded["missing_strategy"] == "dummy"
    got = value(missing_type="image", missing_rate=1.0, seed=1, metric="f1_macro")
    assert got == [pytest.approx(direct, abs=1e-6)]
    clean = RLRTCLI(args=["test", *args, "--ckpt_path", checkpoint]).test_metrics
    for kind in ("image", "text", "both"):
        assert value(missing_type=kind, missing_rate=0.0, seed=0, metric="f1_micro") == [
            pytest.approx(clean["test/f1_micro"], abs=1e-6)
        ]
    # text noise at level 10 masks every word of half the plots: not the clean result
    noisy = value(noise_modality="text", noise_level=10.0, metric="f1_micro")
    assert len(noisy) == 2

    # combining two result files keeps both models apart
    other = frame.assign(model="other")
    other.to_csv(tmp_path / "other.csv", index=False)
    main(
        [
            "robustness-report",
            str(out / "robustness.csv"),
            str(tmp_path / "other.csv"),
            "--output",
            str(tmp_path / "both"),
        ]
    )
    combined = read_results([tmp_path / "both" / "robustness.csv"])
    assert set(combined["model"]) == {"tiny", "other"}
    text = squeeze((tmp_path / "both" / "robustness.md").read_text())
    assert "| missing rate (%) | tiny | other |" in text


def test_robustness_refuses_a_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "no.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["robustness", "--ckpt_path", str(missing), "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlrt: error: checkpoint not found")
    assert str(missing) in err[0]
