"""`rlrt predict` on a user's JSONL / CSV of (image path, text) pairs, modalities missing or not."""

import json
import shutil

import pandas as pd
import pytest

from data_modules.pairs import PairsDataModule, read_rows
from rlrt.cli import main
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.tiny_encoders import tiny_encoder_args
from tests.test_cli import CONFIGS, demo_args

GENRES_AT = 23


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_vit_config, tiny_llama_dir):
    """A tiny checkpoint on the demo data, and two of the demo posters."""
    folder = tmp_path_factory.mktemp("predict")
    args = demo_args(folder, tiny_vit_config, tiny_llama_dir, num_movies=32)
    args = [a for a in args if not a.startswith("--trainer.max_epochs")] + [
        "--trainer.max_epochs=1",
        f"--trainer.default_root_dir={folder}",
        f"--trainer.logger.init_args.save_dir={folder / 'runs'}",
    ]
    fit = RLRTCLI(args=["fit", *args])
    posters = sorted((folder / "demo_data").rglob("*.jpeg"))[:2]
    images = folder / "my_images"
    images.mkdir()
    for poster in posters:
        shutil.copy(poster, images / poster.name)
    return fit.trainer.checkpoint_callback.last_model_path, folder, [p.name for p in posters]


def predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, output, *extra):
    checkpoint, _, _ = trained
    # runs/predict/version_N under tmp_path, a new one per call
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "runs"), "name": "predict"},
    }
    main(
        [
            "predict",
            "--config",
            str(CONFIGS / "model" / "demo.yaml"),
            "--config",
            str(CONFIGS / "predict" / "pairs.yaml"),
            *tiny_encoder_args(tiny_vit_config, tiny_llama_dir),
            f"--data.init_args.path={pairs}",
            "--data.init_args.num_workers=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks.init_args.output={output}",
            f"--trainer.logger=[{json.dumps(logger)}]",
            "--ckpt_path",
            checkpoint,
            *extra,
        ]
    )


def test_predict_jsonl_one_row_per_input_with_missing_modalities(
    tmp_path, trained, tiny_vit_config, tiny_llama_dir
):
    _, folder, posters = trained
    pairs = folder / "pairs.jsonl"
    rows = [
        {"id": "both", "image": f"my_images/{posters[0]}", "text": "a space robot at war"},
        {"id": "image only", "image": f"my_images/{posters[0]}"},
        {"id": "image, empty text", "image": f"my_images/{posters[0]}", "text": ""},
        {"id": "text only", "image": None, "text": "a funny song about love"},
        {"image": str(folder / "my_images" / posters[1]), "text": "the ghost house"},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "predictions.jsonl"
    predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, output)
    got = [json.loads(line) for line in output.read_text().splitlines()]
    assert [g["id"] for g in got] == ["both", "image only", "image, empty text", "text only", "5"]
    assert [(g["image_present"], g["text_present"]) for g in got] == [
        (True, True),
        (True, False),
        (True, True),
        (False, True),
        (True, True),
    ]
    for g in got:
        assert len(g["scores"]) == GENRES_AT and "Drama" in g["scores"]
        assert g["labels"] == [n for n, v in g["scores"].items() if v >= 0.5]
        assert all(0.0 <= v <= 1.0 for v in g["scores"].values())
    # the dummy strategy replaces a missing text by the empty string: same scores
    assert got[1]["scores"] == pytest.approx(got[2]["scores"], abs=1e-5)
    assert got[0]["scores"] != pytest.approx(got[1]["scores"], abs=1e-5)


def test_predict_csv_and_bad_rows(tmp_path, trained, tiny_vit_config, tiny_llama_dir):
    _, folder, posters = trained
    pairs = folder / "pairs.csv"
    pairs.write_text(f"image,text\nmy_images/{posters[0]},a movie\n,only text here\n")
    output = tmp_path / "predictions.csv"
    predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, output)
    table = pd.read_csv(output, keep_default_na=False)
    assert table["id"].astype(str).tolist() == ["2", "3"]  # line numbers, header is line 1
    assert table["image_present"].tolist() == [True, False]
    assert (
        len(
            [
                c
                for c in table.columns
                if c not in ("id", "labels", "image_present", "text_present", "error")
            ]
        )
        == GENRES_AT
    )

    bad = folder / "bad.jsonl"
    bad.write_text(json.dumps({"image": "my_images/nope.jpeg", "text": "x"}) + "\n")
    with pytest.raises(SystemExit):  # one clear line naming the row, before any output
        predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, bad, tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists()
    skipped = tmp_path / "skipped.jsonl"
    bad.write_text(
        json.dumps({"image": "my_images/nope.jpeg", "text": "x"})
        + "\n{not json\n"
        + json.dumps({"text": "fine"})
        + "\n"
    )
    with pytest.warns(UserWarning, match=r"pairs predict: dropped 2 bad sample"):
        predict(
            tmp_path,
            trained,
            tiny_vit_config,
            tiny_llama_dir,
            bad,
            skipped,
            "--data.init_args.on_bad_sample=skip",
        )
    got = [json.loads(line) for line in skipped.read_text().splitlines()]
    assert [g["id"] for g in got] == ["3", "1", "2"]
    assert "labels" in got[0] and "missing image" in got[1]["error"]
    assert "malformed row" in got[2]["error"]


def test_predict_ckpt_path_last_finds_the_fit_runs_last_checkpoint(
    tmp_path, trained, tiny_vit_config, tiny_llama_dir
):
    checkpoint, folder, posters = trained
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(folder / "my_images" / posters[0]), "text": "x"}))
    by_path, by_last = tmp_path / "by_path.jsonl", tmp_path / "by_last.jsonl"
    predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, by_path)
    # the fit's logger directory: `last` is the newest last.ckpt of its runs
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(folder / "runs"), "name": "rlrt"},
    }
    extra = [f"--trainer.logger=[{json.dumps(logger)}]", "--ckpt_path", "last"]
    predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, by_last, *extra)
    assert checkpoint.startswith(str(folder / "runs" / "rlrt"))
    assert by_last.read_text() == by_path.read_text()
    # a logger directory without runs: one line saying so, nothing written
    empty = {**logger, "init_args": {"save_dir": str(tmp_path / "none"), "name": "rlrt"}}
    extra = [f"--trainer.logger=[{json.dumps(empty)}]", "--ckpt_path", "last"]
    nothing = tmp_path / "nothing.jsonl"
    with pytest.raises(SystemExit):
        predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, nothing, *extra)
    assert not nothing.exists()


def test_read_rows_refuses_other_formats_and_headerless_csv(tmp_path):
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match=".jsonl or a .csv"):
        list(read_rows(tmp_path / "x.txt"))
    (tmp_path / "x.csv").write_text("path,caption\na,b\n")
    with pytest.raises(ValueError, match="header"):
        list(read_rows(tmp_path / "x.csv"))


def test_pairs_without_a_checkpoint_say_what_to_give(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "x"}\n')
    module = PairsDataModule(path=str(tmp_path / "p.jsonl"))
    with pytest.raises(ValueError, match="--ckpt_path"):
        _ = module.class_names


def test_predict_refuses_to_overwrite_unless_asked(
    tmp_path, trained, tiny_vit_config, tiny_llama_dir, capsys
):
    _, folder, posters = trained
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(folder / "my_images" / posters[0]), "text": "x"}))
    pairs_before = pairs.read_bytes()
    output = tmp_path / "earlier.jsonl"
    output.write_text("an earlier result\n")

    def refused(out, *extra) -> str:
        with pytest.raises(SystemExit) as exit_info:
            predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, out, *extra)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert not any("Traceback" in line for line in err)
        assert err[-1].startswith("rlrt: error: ")
        return err[-1]

    line = refused(output)
    assert f"{output} already exists" in line and "overwrite true" in line
    assert output.read_text() == "an earlier result\n"
    # its own input file: refused, even with overwrite
    for extra in ([], ["--trainer.callbacks.init_args.overwrite=true"]):
        assert "is the input file" in refused(pairs, *extra)
        assert pairs.read_bytes() == pairs_before
    assert "must end in .jsonl, .json or .csv" in refused(tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    predict(
        tmp_path,
        trained,
        tiny_vit_config,
        tiny_llama_dir,
        pairs,
        output,
        "--trainer.callbacks.init_args.overwrite=true",
    )
    assert json.loads(output.read_text())["id"] == "1"


def test_predict_output_suffix_decides_the_format_in_any_case(
    tmp_path, trained, tiny_vit_config, tiny_llama_dir
):
    _, folder, posters = trained
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"image": str(folder / "my_images" / posters[0]), "text": "x"}))
    upper = tmp_path / "out.CSV"
    predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, upper)
    table = pd.read_csv(upper, keep_default_na=False)
    assert table["id"].astype(str).tolist() == ["1"] and len(table.columns) == 5 + GENRES_AT
    as_json = tmp_path / "out.Json"
    predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, pairs, as_json)
    assert json.loads(as_json.read_text())["id"] == "1"


def test_pairs_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    """Excel writes UTF-8 CSVs with a BOM; it must not rename the first column."""
    from data_modules.pairs import read_rows

    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("\ufeffimage,text\na.jpg,hello\n", encoding="utf-8")
    jsonl_file = tmp_path / "pairs.jsonl"
    jsonl_file.write_text('\ufeff{"image": "a.jpg", "text": "hello"}\n', encoding="utf-8")
    expected = [(2, {"image": "a.jpg", "text": "hello"})]
    assert list(read_rows(csv_file)) == expected
    assert list(read_rows(jsonl_file)) == [(1, expected[0][1])]
