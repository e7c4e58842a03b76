"""Bad input at the edges: one line `rlrt: error: ...` on stderr, exit status 2, no traceback
(unless `--debug`)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlrt.cli import main
from rlrt.engine.checkpoints import add_digest
from rlrt.engine.errors import one_line, parse_error_line, split_debug_flag, user_error_message
from rlrt.engine.lightning_cli import RLRTCLI
from tests.test_cli import demo_args as cli_demo_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# tiny models: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_errors")


def demo_args(base: Path, vit_config: Path, llama_dir: Path) -> list[str]:
    return [
        *cli_demo_args(base, vit_config, llama_dir, num_movies=40),
        "--trainer.max_epochs=1",
        "--trainer.enable_model_summary=false",
    ]


@pytest.fixture(scope="module")
def args(base, tiny_vit_config, tiny_llama_dir):
    return demo_args(base, tiny_vit_config, tiny_llama_dir)


@pytest.fixture(scope="module")
def checkpoint(base, args):
    """A real checkpoint of a one-epoch fit with `args`."""
    cwd = Path.cwd()
    os.chdir(base)
    try:
        fit = RLRTCLI(args=["fit", *args])
    finally:
        os.chdir(cwd)
    return base / fit.trainer.checkpoint_callback.last_model_path


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fails_in_one_line(argv: list[str], capsys) -> str:
    """Run `main(argv)`; it must exit with 2 after one `rlrt: error:` line and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "usage:" not in err  # no usage dump either
    lines = [line for line in err.splitlines() if line.startswith("rlrt: error:")]
    assert len(lines) == 1, err[-2000:]
    assert err.rstrip().endswith(lines[0])  # the last thing said
    return lines[0].removeprefix("rlrt: error: ")


# ---------------------------------------------------------------- config


def test_unknown_key_on_the_command_line(in_tmp, args, capsys):
    message = fails_in_one_line(["fit", *args, "--model.comon_dim=8"], capsys)
    assert "comon_dim" in message and "rlrt fit --help" in message


@pytest.mark.parametrize("command", ["fit", "cache"])
@pytest.mark.parametrize("form", ["separate", "joined"])
def test_a_binary_config_file_is_named(in_tmp, args, capsys, command, form):
    binary = in_tmp / "some.bin"
    binary.write_bytes(b"\x89\xd9\xff\x00\xfe" + os.urandom(256))
    config = ["--config", str(binary)] if form == "separate" else [f"--config={binary}"]
    message = fails_in_one_line([command, *args, *config], capsys)
    assert str(binary) in message and "not a UTF-8 YAML file" in message


def test_unknown_key_in_a_config_file(in_tmp, args, capsys):
    typo = in_tmp / "typo.yaml"
    typo.write_text("data:\n  init_args:\n    batchsize: 5\n")
    message = fails_in_one_line(["fit", *args, "--config", str(typo)], capsys)
    assert "Option 'batchsize' is not accepted" in message
    assert "NoneType" not in message  # jsonargparse's union noise is dropped


def test_wrong_type(in_tmp, args, capsys):
    message = fails_in_one_line(["fit", *args, "--model.common_dim=eight"], capsys)
    assert '"model.common_dim"' in message and "int" in message and "eight" in message


def test_a_cca_window_too_small_for_the_common_width(in_tmp, args, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the encoders were built before the refusal")

    monkeypatch.setattr("rlrt.encoders.FrozenTextEncoder.__init__", never)
    message = fails_in_one_line(["fit", *args, "--model.cca_window=40"], capsys)
    assert message.startswith("L_CCA would rest on cca_window=40 samples for common_dim=8")
    assert "model.cca_window" in message and "model.cca_allow_degenerate=true" in message


def test_num_classes_in_the_config_disagreeing_with_the_data(in_tmp, args, capsys):
    extra = in_tmp / "classes.yaml"
    extra.write_text("model:\n  num_classes: 5\n")
    message = fails_in_one_line(["fit", *args, "--config", str(extra)], capsys)
    assert "model.num_classes=5" in message and "data module" in message
    assert not (in_tmp / "results").exists()  # refused before any run directory


def test_num_classes_on_the_command_line_is_refused(in_tmp, args, capsys):
    message = fails_in_one_line(["fit", *args, "--model.num_classes=5"], capsys)
    assert "data.num_classes" in message


def test_model_whose_classes_disagree_with_the_data_module(image_encoder, text_encoder):
    """Built in Python, past the CLI's link: `setup` compares with the data module."""
    from types import SimpleNamespace

    from rlrt.system import RLRT

    model = RLRT(image_encoder=image_encoder, text_encoder=text_encoder, num_classes=5)
    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=23))
    with pytest.raises(ValueError, match="num_classes=5 but the data module .* has 23 classes"):
        model.setup("fit")


# ---------------------------------------------------------------- data


def test_dataset_root_that_does_not_exist(in_tmp, args, capsys):
    missing = in_tmp / "no_such_mmimdb"
    argv = ["fit", *args, "--config", str(CONFIGS / "data" / "mmimdb.yaml")]
    argv += [f"--data.init_args.root={missing}", "--data.init_args.num_workers=0"]
    message = fails_in_one_line(argv, capsys)
    assert "split.json not found" in message and str(missing) in message
    assert "does not exist" in message


def test_dataset_root_with_the_wrong_layout(in_tmp, args, capsys):
    root = in_tmp / "mmimdb"
    root.mkdir()
    (root / "split.json").write_text(json.dumps({"train": [], "dev": [], "test": []}))
    (root / "posters").mkdir()
    argv = ["fit", *args, "--config", str(CONFIGS / "data" / "mmimdb.yaml")]
    argv += [f"--data.init_args.root={root}", "--data.init_args.num_workers=0"]
    message = fails_in_one_line(argv, capsys)
    assert "dataset/" in message and "Accepted layouts" in message


# ---------------------------------------------------------------- encoders


def test_open_clip_model_that_does_not_exist(in_tmp, args, capsys):
    argv = ["fit", *args, "--model.image_encoder.init_args.config_file=null"]
    message = fails_in_one_line(
        argv + ["--model.image_encoder.init_args.model_name=ViT-Nope"], capsys
    )
    assert "open_clip has no model 'ViT-Nope'" in message


def test_open_clip_weights_that_cannot_be_had(in_tmp, args, capsys):
    argv = ["fit", *args, "--model.image_encoder.init_args.pretrained=no-such-tag"]
    message = fails_in_one_line(argv, capsys)
    assert "image encoder weights 'no-such-tag'" in message


def test_text_model_path_that_does_not_exist(in_tmp, args, capsys):
    missing = in_tmp / "no_such_model"
    argv = ["fit", *args, f"--model.text_encoder.init_args.model_name_or_path={missing}"]
    message = fails_in_one_line(argv, capsys)
    assert f"text model folder '{missing}' does not exist" in message


# ---------------------------------------------------------------- checkpoints


def test_truncated_checkpoint(in_tmp, args, checkpoint, capsys):
    broken = in_tmp / "truncated.ckpt"
    raw = checkpoint.read_bytes()
    broken.write_bytes(raw[: len(raw) // 2])
    message = fails_in_one_line(["test", *args, "--ckpt_path", str(broken)], capsys)
    assert message.startswith(f"checkpoint {broken} is truncated or corrupted")
    assert not (in_tmp / "results").exists()  # refused before the run started


def test_checkpoint_with_flipped_bytes_in_a_tensor(in_tmp, args, checkpoint, capsys):
    """The zip container does not notice flipped tensor bytes; the digest does."""
    raw = bytearray(checkpoint.read_bytes())
    weight = torch.load(checkpoint, weights_only=True)["state_dict"]["fusion.classifier.0.weight"]
    needle = weight.reshape(-1)[:8].numpy().tobytes()
    at = raw.find(needle)
    assert at > 0
    raw[at : at + 8] = bytes(b ^ 0xFF for b in raw[at : at + 8])
    broken = in_tmp / "flipped.ckpt"
    broken.write_bytes(bytes(raw))
    assert torch.load(broken, weights_only=True)  # still loads...
    message = fails_in_one_line(["test", *args, "--ckpt_path", str(broken)], capsys)
    assert message.startswith(f"checkpoint {broken} is corrupted")  # ...but is refused


def test_checkpoint_trained_with_other_encoder_layers(in_tmp, args, checkpoint, capsys):
    argv = ["test", *args, "--ckpt_path", str(checkpoint)]
    message = fails_in_one_line(argv + ["--model.image_encoder.init_args.layers=[0, 2]"], capsys)
    assert message.startswith("checkpoint was trained with image encoder layers=[1, 2]")
    assert "[0, 2]" in message


def test_checkpoint_trained_with_another_head(in_tmp, args, checkpoint, capsys):
    argv = ["test", *args, "--ckpt_path", str(checkpoint), "--model.common_dim=16"]
    message = fails_in_one_line(argv, capsys)
    assert message.startswith("checkpoint was trained with common_dim=8 but the config gives 16")


def test_checkpoint_trained_with_another_number_of_classes(in_tmp, args, checkpoint, capsys):
    content = torch.load(checkpoint, weights_only=True)
    content["hyper_parameters"]["num_classes"] = 5
    add_digest(content)  # a consistent checkpoint of a 5-class model
    other = in_tmp / "five_classes.ckpt"
    torch.save(content, other)
    message = fails_in_one_line(["test", *args, "--ckpt_path", str(other)], capsys)
    assert message.startswith("checkpoint was trained with num_classes=5 but the config gives 23")


def test_checkpoint_path_that_does_not_exist(in_tmp, args, capsys):
    message = fails_in_one_line(["test", *args, "--ckpt_path", "nowhere.ckpt"], capsys)
    assert message.startswith("checkpoint nowhere.ckpt does not exist")


def test_ckpt_path_last_without_an_earlier_run(in_tmp, args, capsys):
    message = fails_in_one_line(["test", *args, "--ckpt_path", "last"], capsys)
    assert message.startswith("--ckpt_path last: no last checkpoint")


# ---------------------------------------------------------------- --debug and the console script


def test_debug_shows_the_exception(in_tmp, args):
    missing = in_tmp / "no_such_model"
    argv = ["fit", *args, f"--model.text_encoder.init_args.model_name_or_path={missing}"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main([*argv, "--debug"])


def test_console_script_prints_one_line_and_exits_2(in_tmp, args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "rlrt.cli", "fit", *args, "--model.comon_dim=8"],
        cwd=in_tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("rlrt: error: ")
    assert sum(line.startswith("rlrt: error:") for line in done.stderr.splitlines()) == 1


# ---------------------------------------------------------------- the formatting itself


def test_formatting_helpers():
    assert split_debug_flag(["fit", "--debug", "-c", "x"]) == (["fit", "-c", "x"], True)
    assert split_debug_flag(["fit"]) == (["fit"], False)
    worker = "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most ...\n"
    assert one_line(worker + "  File x\nValueError: bad label 7\n") == "ValueError: bad label 7"
    union = (
        'Parser key "data":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [A, <class 'NoneType'>]\n  Errors:\n    - Problem with given class_path 'X':\n"
        "        Option 'b' is not accepted\n    - Expected a <class 'NoneType'>\n"
        "  Given value type: <class 'dict'>\n  Given value: {}"
    )
    assert parse_error_line(union, "rlrt fit") == (
        "Parser key \"data\": Problem with given class_path 'X': Option 'b' is not accepted; "
        "see `rlrt fit --help` for the accepted options"
    )


def test_a_data_modules_own_check_is_one_clean_line(tmp_path, capsys, monkeypatch):
    """A value the data module itself refuses (here batch_size 0), raised while jsonargparse
    instantiates it, shows the module's message, not the union report around it."""
    from rlrt.cli import main

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the demo model config names its encoder config relative to it
    args = [f"--config=configs/{kind}/demo.yaml" for kind in ("trainer", "data", "model")]
    with pytest.raises(SystemExit):
        main(["fit", *args, f"--data.init_args.root={tmp_path}", "--data.init_args.batch_size=0"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("rlrt: error: ") and "batch_size must be >= 1, got 0" in error
    assert "Union" not in error and "Given value" not in error and "NoneType" not in error


def test_which_errors_are_the_users():
    full = OSError(errno.ENOSPC, "No space left on device", "runs/rlrt/version_3/last.ckpt")
    message = user_error_message(full)
    assert message.startswith("No space left on device (runs/rlrt/version_3/last.ckpt)")
    assert "free space" in message
    assert user_error_message(ValueError("a\n  b")) == "a b"
    assert user_error_message(FileNotFoundError("gone")) == "gone"
    assert user_error_message(RuntimeError("shape mismatch in a matmul")) is None  # a bug
    assert user_error_message(KeyError("x")) is None


def test_a_file_name_too_long_is_one_line_naming_it(in_tmp, args, capsys):
    root = in_tmp / ("x" * 300)
    message = fails_in_one_line(["fit", *args, f"--data.init_args.root={root}"], capsys)
    assert message.startswith("file name too long: ") and "use a shorter path" in message
    assert "Traceback" not in message
