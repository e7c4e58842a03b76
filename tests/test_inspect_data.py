"""`rlrt inspect-data` on the fake datasets: counts, reasons, warnings, no model built."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from data_modules.fakes import write_fake_food101, write_fake_mmimdb, write_fake_snli_ve
from data_modules.fakes.labelled_file import write_labelled_example
from rlrt.cli import main
from rlrt.commands.inspect_data import names_a_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def inspect(
    capsys, data_config: str, root: Path, *extra: str, model: str | None = "rlrt.yaml"
) -> tuple[str, str]:
    """Run the command with the paper's model config (parsed only: no weights exist here), or
    with `model=None` without any model config."""
    models = [] if model is None else ["--config", str(CONFIGS / "model" / model)]
    main(
        [
            "inspect-data",
            "--config",
            str(CONFIGS / "data" / data_config),
            *models,
            "--data.root",
            str(root),
            *extra,
        ]
    )
    captured = capsys.readouterr()
    return captured.out, captured.err


def inspect_own_data(capsys, folder: Path, *extra: str) -> tuple[str, str]:
    """Run the command on `configs/data/labelled_file.yaml` pointed at `folder`, no model."""
    files = [f"--data.{split}={folder / f'{split}.jsonl'}" for split in ("train", "val", "test")]
    main(["inspect-data", "--config", str(CONFIGS / "data" / "labelled_file.yaml"), *files, *extra])
    captured = capsys.readouterr()
    return captured.out, captured.err


def expected_splits(kept: dict, dropped: set) -> dict:
    return {
        split: {
            "count": len(kept.get(split, [])),
            "dropped": sum(s == split for s, _, _ in dropped),
            "reasons": dict(Counter(kind for s, _, kind in dropped if s == split)),
        }
        for split in ("train", "val", "test")
    }


def test_json_mmimdb(tmp_path, capsys):
    fake = write_fake_mmimdb(tmp_path / "mmimdb", num_movies=5)
    out, err = inspect(capsys, "mmimdb.yaml", fake.root, "--json")
    report = json.loads(out)  # stdout holds exactly one JSON object
    assert report == {"splits": expected_splits(fake.kept, fake.expected_bad("longest"))}
    assert "MM-IMDB train: 14 entries in the files, the standard split has 15,552" in err


def test_json_snli_ve(tmp_path, capsys):
    fake = write_fake_snli_ve(tmp_path / "snli_ve")
    out, err = inspect(capsys, "snli_ve.yaml", fake.root, "--json")
    assert json.loads(out) == {"splits": expected_splits(fake.kept, fake.dropped)}
    assert "SNLI-VE val" in err and "17,858" in err


def test_text_report_food101(tmp_path, capsys):
    fake = write_fake_food101(tmp_path / "food101")
    out, err = inspect(capsys, "food101.yaml", fake.root, "--data.val_size", "0.25")
    for _, sample_id, kind in fake.dropped:  # every dropped sample, with its reason
        assert any(sample_id in line and kind in line for line in out.splitlines()), sample_id
    assert "== train:" in out and "== val:" in out and "== test:" in out
    assert "pizza 0" not in out and "waffles 0" in out  # the label histogram, every class
    assert "text length in words: min 0" in out  # the kept empty title
    assert "67,972" not in err  # the train CSV splits into train + val sizes
    assert "UPMC-Food101 test: 10 entries in the files, the standard split has 22,716" in err


def test_missing_root_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        inspect(capsys, "snli_ve.yaml", tmp_path / "nowhere")
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("rlrt: error: SNLI-VE: snli_ve_train.jsonl not found; looked for")
    assert str(tmp_path / "nowhere") in lines[-1] and "Accepted layouts" in lines[-1]


def test_without_a_model_config_the_same_report(tmp_path, capsys):
    fake = write_fake_snli_ve(tmp_path / "snli_ve")
    with_model, _ = inspect(capsys, "snli_ve.yaml", fake.root, "--json")
    without, err = inspect(capsys, "snli_ve.yaml", fake.root, "--json", model=None)
    assert json.loads(without) == json.loads(with_model)
    assert json.loads(without) == {"splits": expected_splits(fake.kept, fake.dropped)}
    assert "SNLI-VE val" in err  # the size warnings too


def test_the_image_size_without_and_with_a_model(tmp_path, capsys):
    fake = write_fake_snli_ve(tmp_path / "snli_ve", dirty=False)
    out, _ = inspect(capsys, "snli_ve.yaml", fake.root, model=None)
    assert "(SNLIVEDataModule, image size 224)" in out.splitlines()[0]  # the data module's default
    out, _ = inspect(capsys, "snli_ve.yaml", fake.root, "--data.image_size=48", model=None)
    assert "image size 48)" in out.splitlines()[0]
    out, _ = inspect(capsys, "snli_ve.yaml", fake.root, model="demo.yaml")
    assert "image size 64)" in out.splitlines()[0]  # linked from the demo image encoder


def test_own_labelled_data_without_a_model(tmp_path, capsys):
    written = write_labelled_example(tmp_path / "mine", multilabel=True)
    out, _ = inspect_own_data(capsys, tmp_path / "mine", "--json")
    kept = {s: len(rows) for s, rows in written.items()}
    assert json.loads(out) == {
        "splits": {s: {"count": n, "dropped": 0, "reasons": {}} for s, n in kept.items()}
    }
    out, _ = inspect_own_data(capsys, tmp_path / "mine")
    counts = Counter(c for row in written["val"] for c in row["labels"])
    val = out.split("== val:")[1].split("==")[0]
    assert "labels: " + ", ".join(f"{c} {counts[c]}" for c in sorted(counts)) in val


def test_own_data_missing_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        inspect_own_data(capsys, tmp_path / "nowhere")
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("rlrt: error: labelled file: train file not found; looked for")
    assert str(tmp_path / "nowhere" / "train.jsonl") in last and "--data.train FILE" in last


def test_names_a_model(tmp_path):
    data, model = CONFIGS / "data" / "snli_ve.yaml", CONFIGS / "model" / "demo.yaml"
    assert not names_a_model(["--config", str(data), "--data.root", "x"])
    assert names_a_model(["--config", str(data), "--config", str(model)])
    assert names_a_model([f"--config={model}"])
    assert names_a_model(["--model.common_dim=8"])
    assert names_a_model(["--config", "{model: {common_dim: 8}}"])  # inline YAML
    run_config = tmp_path / "config.yaml"  # a run's saved config holds every section
    run_config.write_text("trainer: {max_epochs: 1}\nmodel: {common_dim: 8}\n")
    assert names_a_model(["--config", str(run_config)])
