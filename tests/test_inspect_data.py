"""`rlrt inspect-data` on the fake datasets: counts, reasons, warnings, no model built."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from data_modules.fakes import write_fake_food101, write_fake_mmimdb, write_fake_snli_ve
from rlrt.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def inspect(capsys, data_config: str, root: Path, *extra: str) -> tuple[str, str]:
    """Run the command with the paper's model config (parsed only: no weights exist here)."""
    main(
        [
            "inspect-data",
            "--config",
            str(CONFIGS / "data" / data_config),
            "--config",
            str(CONFIGS / "model" / "rlrt.yaml"),
            "--data.root",
            str(root),
            *extra,
        ]
    )
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
