"""Adversarial round three, the run and command-line cases: `rlrt fit` on odd batch sizes, zero
epochs and an empty validation split; a checkpoint tested on a dataset with other classes;
`rlrt robustness` grids out of range; `rlrt cache` onto a file or into a read-only folder; a
full disk while `rlrt predict` writes. Each works, or ends in one line naming the file or option
and what to do (exit 2, no traceback), with nothing lost or half-written.

The read-only folder is simulated by making the OS calls that create files in it fail with
EROFS / EACCES (tests run as root, whom permission bits do not stop); the full disk by a write
that stops half-way with ENOSPC.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from data_modules.fakes.labelled_file import write_labelled_example
from rlrt.cache.lock import LOCK_NAME
from rlrt.engine.checkpoints import read_checkpoint
from rlrt.engine.errors import INTERRUPTED, run_reporting_errors
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.tiny_encoders import tiny_encoder_args
from tests.test_cli_errors import CONFIGS, demo_args, fails_in_one_line
from tests.test_predict import predict

SPLITS = ("train", "val", "test")
TRAIN_SAMPLES = 28  # of the 40 demo movies


# tiny models: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("adversarial_runs")


@pytest.fixture(scope="module")
def args(base, tiny_vit_config, tiny_llama_dir):
    return [*demo_args(base, tiny_vit_config, tiny_llama_dir), "--trainer.log_every_n_steps=1"]


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def demo_checkpoint(base, args):
    """A one-epoch fit on the 23-genre demo data (multi-label): its last checkpoint."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        fit = RLRTCLI(args=["fit", *args])
    return Path(base / fit.trainer.checkpoint_callback.last_model_path)


def fit(argv: list[str]) -> RLRTCLI:
    return RLRTCLI(args=["fit", *argv])


def logged_losses(run_dir: Path) -> pd.DataFrame:
    """The per-step training losses of a run's metrics.csv."""
    frame = pd.read_csv(run_dir / "metrics.csv")
    return frame.dropna(subset=["train/loss_step"])[
        ["step", "train/loss_step", "train/task_loss_step"]
    ]


def no_run_dirs(folder: Path) -> bool:
    return not list(folder.glob("results/demo/runs/rlrt/version_*"))


# ------------------------------------------------------------------ `rlrt fit`: batch sizes


def test_fit_with_a_batch_larger_than_the_training_split_trains_on_all_of_it(in_tmp, args):
    run = fit([*args, "--data.init_args.batch_size=1000"])
    trainer = run.trainer
    assert trainer.num_training_batches == 1 and trainer.global_step == 1  # nothing dropped
    batches = run.datamodule.train_dataloader()
    assert [len(batch["id"]) for batch in batches] == [TRAIN_SAMPLES]
    checkpoint = read_checkpoint(trainer.checkpoint_callback.last_model_path)
    assert checkpoint["global_step"] == 1
    losses = logged_losses(Path(trainer.log_dir))
    assert len(losses) == 1 and math.isfinite(losses["train/loss_step"].iloc[0])


def test_fit_with_batch_size_1_trains_every_sample_and_says_l_cca_is_off(in_tmp, args):
    """A batch of one trains the task loss; L_CCA needs two samples in a batch (even on its
    running statistics, warmed up after 80 samples here in the third epoch), so it adds
    nothing: the run says so once instead of dropping it silently."""
    with pytest.warns(UserWarning, match="data.batch_size=1: L_CCA needs at least 2 samples"):
        run = fit([*args, "--data.init_args.batch_size=1", "--trainer.max_epochs=3"])
    assert run.trainer.global_step == 3 * TRAIN_SAMPLES
    assert run.model.cca.seen.item() == 3 * TRAIN_SAMPLES  # the statistics still fill
    losses = logged_losses(Path(run.trainer.log_dir))
    assert len(losses) == 3 * TRAIN_SAMPLES
    assert losses[["train/loss_step", "train/task_loss_step"]].map(math.isfinite).all().all()
    assert (losses["train/loss_step"] == losses["train/task_loss_step"]).all()
    read_checkpoint(run.trainer.checkpoint_callback.last_model_path)


def test_fit_with_batch_size_2_uses_l_cca_once_warm(in_tmp, args, recwarn):
    run = fit([*args, "--data.init_args.batch_size=2", "--trainer.max_epochs=3"])
    assert not [w for w in recwarn if "L_CCA needs" in str(w.message)]
    losses = logged_losses(Path(run.trainer.log_dir))
    cca_part = losses["train/loss_step"] - losses["train/task_loss_step"]
    cold = losses["step"] < 39  # fewer than 80 samples seen: still warming up
    assert (cca_part[cold] == 0).all() and (cca_part[~cold] != 0).any()


# ---------------------------------------------------------------- `rlrt fit`: zero epochs


@pytest.mark.parametrize("limit", ["max_epochs", "max_steps"])
def test_fit_with_nothing_to_train_is_refused_before_the_encoders_load(
    in_tmp, args, capsys, monkeypatch, limit
):
    def never(*args, **kwargs):
        raise AssertionError("the encoders were built before the refusal")

    monkeypatch.setattr("rlrt.encoders.FrozenTextEncoder.__init__", never)
    message = fails_in_one_line(["fit", *args, f"--trainer.{limit}=0"], capsys)
    assert message.startswith(f"--trainer.{limit}=0: `rlrt fit` would train nothing")
    assert f"give --trainer.{limit} 1 or more" in message
    assert not (in_tmp / "results").exists()


# ------------------------------------------------------------ `rlrt fit`: no validation samples


@pytest.fixture(scope="module")
def no_val_root(base, demo_checkpoint):
    """The demo dataset with an empty validation ("dev") split."""
    root = base / "demo_without_val"
    shutil.copytree(base / "demo_data", root)
    split = json.loads((root / "split.json").read_text())
    split["dev"] = []
    (root / "split.json").write_text(json.dumps(split))
    return root


def test_fit_with_an_empty_validation_split_is_one_line_naming_it(
    in_tmp, args, no_val_root, capsys
):
    from rlrt.cli import main

    argv = ["fit", *args, f"--data.init_args.root={no_val_root}"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.rstrip().splitlines()[-1].startswith("rlrt: error: ")
    message = err.rstrip().splitlines()[-1]
    assert f"the val split under {no_val_root} is empty" in message
    assert "--trainer.limit_val_batches=0" in message
    assert "could not find the monitored key" not in err  # stopped before Lightning's warnings
    assert no_run_dirs(in_tmp)  # refused before training: its run directory is gone


def test_fit_without_validation_when_asked_keeps_the_last_checkpoint(in_tmp, args, no_val_root):
    argv = [*args, f"--data.init_args.root={no_val_root}", "--trainer.limit_val_batches=0"]
    with pytest.warns(UserWarning, match="could not find the monitored key"):
        run = fit(argv)
    assert run.trainer.global_step == 1
    assert read_checkpoint(run.trainer.checkpoint_callback.last_model_path)["global_step"] == 1


# ------------------------------------------------- a checkpoint tested on another dataset


def fruit_args(folder: Path, vit_config: Path, llama_dir: Path) -> list[str]:
    """The labelled-file example (4 fruit classes, multi-class) under `folder`."""
    return [
        "--config",
        str(CONFIGS / "trainer" / "demo.yaml"),
        "--config",
        str(CONFIGS / "data" / "labelled_file.yaml"),
        "--config",
        str(CONFIGS / "model" / "demo.yaml"),
        *(f"--data.{split}={folder / f'{split}.jsonl'}" for split in SPLITS),
        "--data.num_workers=0",
        "--data.batch_size=8",
        *tiny_encoder_args(vit_config, llama_dir),
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def test_a_checkpoint_of_another_dataset_is_refused_naming_both_class_lists(
    in_tmp, demo_checkpoint, capsys, tiny_vit_config, tiny_llama_dir
):
    write_labelled_example(in_tmp / "fruit", sizes={"train": 8, "val": 4, "test": 4})
    argv = fruit_args(in_tmp / "fruit", tiny_vit_config, tiny_llama_dir)
    message = fails_in_one_line(["test", *argv, "--ckpt_path", str(demo_checkpoint)], capsys)
    assert message.startswith("checkpoint was trained with num_classes=23 but the config gives 4")
    assert f"checkpoint {demo_checkpoint} was trained on another dataset" in message
    assert "23 multilabel classes (Drama, Comedy" in message
    assert "4 multiclass classes (apple, banana, grape, lime)" in message
    assert "evaluate it on the data it was trained on" in message
    assert no_run_dirs(in_tmp)


def test_a_checkpoint_of_as_many_other_classes_is_refused(
    in_tmp, capsys, tiny_vit_config, tiny_llama_dir
):
    """Same count, same task, other names: the class list decides (label i means another
    class)."""
    write_labelled_example(in_tmp / "fruit", sizes={"train": 8, "val": 4, "test": 4})
    run = fit(fruit_args(in_tmp / "fruit", tiny_vit_config, tiny_llama_dir))
    checkpoint = run.trainer.checkpoint_callback.last_model_path
    shutil.copytree(in_tmp / "fruit", in_tmp / "other")
    for split in SPLITS:
        path = in_tmp / "other" / f"{split}.jsonl"
        path.write_text(path.read_text().replace('"apple"', '"cherry"'))
    argv = fruit_args(in_tmp / "other", tiny_vit_config, tiny_llama_dir)
    message = fails_in_one_line(["test", *argv, "--ckpt_path", checkpoint], capsys)
    assert message.startswith(
        "checkpoint was trained with class_names=['apple', 'banana', 'grape', 'lime'] but the "
        "config gives ['banana', 'cherry', 'grape', 'lime']"
    )
    assert f"checkpoint {checkpoint} was trained on another dataset" in message


# ------------------------------------------------------------ `rlrt robustness` out of range


@pytest.mark.parametrize(
    ("option", "value", "bad"),
    [
        ("--rates", "0,0.5,1.5", "1.5"),
        ("--rates", "-0.1", "-0.1"),
        ("--rates", "0,nan", "nan"),
        ("--rates", "0,half", "half"),
        ("--noise_levels", "0,-1", "-1"),
        ("--noise_levels", "11", "11"),
        ("--noise_fraction", "2", "2.0"),
    ],
)
def test_robustness_grid_out_of_range_is_refused_before_any_work(
    in_tmp, demo_checkpoint, capsys, monkeypatch, option, value, bad
):
    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was evaluated before the refusal")

    monkeypatch.setattr("rlrt.commands.robustness.Evaluator", never)
    output = in_tmp / "robustness"
    argv = ["robustness", "--ckpt_path", str(demo_checkpoint), "--output", str(output)]
    message = fails_in_one_line([*argv, f"{option}={value}"], capsys)
    assert message.startswith(f"{option} ") and f"{bad!r} is not a number in [0," in message
    assert not output.exists()


def test_robustness_unknown_missing_type_is_named(in_tmp, demo_checkpoint, capsys, monkeypatch):
    monkeypatch.setattr("rlrt.commands.robustness.Evaluator", None)  # never reached
    argv = ["robustness", "--ckpt_path", str(demo_checkpoint), "--output", "out"]
    message = fails_in_one_line([*argv, "--types=image,audio"], capsys)
    assert message.startswith("--types image,audio: 'audio' is not one of image, text, both")


# ------------------------------------------------------- `rlrt cache` onto a file, read-only


def cache_argv(args: list[str], destination: Path) -> list[str]:
    return ["cache", *args, f"--data.init_args.feature_cache={destination}", "--splits=train"]


def test_rlrt_cache_onto_an_existing_file_leaves_it_alone(in_tmp, args, capsys):
    mine = in_tmp / "notes.txt"
    mine.write_text("my notes\n")
    message = fails_in_one_line(cache_argv(args, mine), capsys)
    assert message.startswith(f"feature cache folder {mine} is a file, not a folder; give a folder")
    assert "--data.init_args.feature_cache" in message
    assert mine.read_text() == "my notes\n" and sorted(os.listdir(in_tmp)) == ["notes.txt"]


def test_rlrt_cache_under_an_existing_file_names_the_file(in_tmp, args, capsys):
    mine = in_tmp / "notes.txt"
    mine.write_text("my notes\n")
    message = fails_in_one_line(cache_argv(args, mine / "cache"), capsys)
    assert f"lies under {mine}, which is a file, not a folder" in message
    assert mine.read_text() == "my notes\n"


def refuse_writes_under(monkeypatch, folder: Path, code: int) -> None:
    """File creation (os.open with O_CREAT) and os.mkdir inside `folder` fail with `code`, as on
    a read-only mount (EROFS) or a folder the user may not write to (EACCES)."""
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        path = Path(os.fsdecode(path)).absolute()
        return path == folder or folder in path.parents

    def guarded_open(path, flags, *rest, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_open(path, flags, *rest, **kwargs)

    def guarded_mkdir(path, *rest, **kwargs):
        if inside(path):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_mkdir(path, *rest, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_rlrt_cache_into_a_read_only_folder_is_one_line(in_tmp, args, capsys, monkeypatch, code):
    folder = in_tmp / "mounted"
    folder.mkdir()
    refuse_writes_under(monkeypatch, folder, code)
    message = fails_in_one_line(cache_argv(args, folder / "cache"), capsys)
    assert message.startswith(f"feature cache folder {folder / 'cache'} is not writable")
    assert os.strerror(code) in message and "give another folder as" in message
    monkeypatch.undo()
    assert list(folder.iterdir()) == []  # nothing written


def test_rlrt_cache_into_an_existing_read_only_cache_folder(in_tmp, args, capsys, monkeypatch):
    folder = in_tmp / "cache"
    folder.mkdir()
    refuse_writes_under(monkeypatch, folder, errno.EROFS)
    message = fails_in_one_line(cache_argv(args, folder), capsys)
    assert message.startswith(f"feature cache folder {folder} is not writable")
    assert str(folder / LOCK_NAME) in message
    monkeypatch.undo()
    assert list(folder.iterdir()) == []


# ------------------------------------------------------ a full disk while `rlrt predict` writes


def fill_disk_when_writing(monkeypatch, name: str) -> None:
    """The atomic write of a file called `name` runs out of space half-way (at its fsync, where
    a full disk shows): the temporary file holds half of the bytes when the error comes."""
    real_fsync = os.fsync

    def full(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if Path(target).name.startswith(f".{name}."):
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)


@pytest.fixture()
def pairs(base, demo_checkpoint):
    """(checkpoint, folder, posters) as `tests.test_predict.predict` takes, and a pairs file."""
    posters = sorted((base / "demo_data").rglob("*.jpeg"))[:2]
    images = base / "my_images"
    images.mkdir(exist_ok=True)
    for poster in posters:
        shutil.copy(poster, images / poster.name)
    rows = [{"id": "a", "image": f"my_images/{posters[0].name}", "text": "a space robot"}]
    rows += [{"id": "b", "text": "a funny song"}]
    path = base / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return (str(demo_checkpoint), base, [p.name for p in posters]), path


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds the file by /proc")
def test_a_full_disk_while_predict_writes_keeps_the_earlier_predictions(
    tmp_path, pairs, capsys, monkeypatch, tiny_vit_config, tiny_llama_dir
):
    trained, path = pairs
    output = tmp_path / "predictions.jsonl"
    predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, path, output)  # another run's
    before = output.read_bytes()
    assert [json.loads(line)["id"] for line in before.decode().splitlines()] == ["a", "b"]

    fill_disk_when_writing(monkeypatch, output.name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict(
            tmp_path, trained, tiny_vit_config, tiny_llama_dir, path, output,
            "--trainer.callbacks.init_args.overwrite=true",
        )  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.rstrip().splitlines()[-1]
    assert line == (
        f"rlrt: error: No space left on device ({output}); free space or fix the permissions, "
        "then rerun"
    )
    assert output.read_bytes() == before  # the earlier file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl", "runs"]  # no temp

    fresh = tmp_path / "new.jsonl"
    fill_disk_when_writing(monkeypatch, fresh.name)
    with pytest.raises(SystemExit):
        predict(tmp_path, trained, tiny_vit_config, tiny_llama_dir, path, fresh)
    assert not fresh.exists()  # no half-written file under the name
    assert not list(tmp_path.glob(".new.jsonl.*"))


# ------------------------------------------------------------------------ Ctrl-C, any command


def test_ctrl_c_that_lightning_turned_into_exit_1_is_one_line_and_130(capsys):
    """Lightning catches KeyboardInterrupt in `fit`/`test`/`predict` and calls `sys.exit(1)`;
    `rlrt` reports it as the interruption it is (a real SIGINT: test_adversarial_processes)."""

    def lightning_like(argv):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemExit(1)  # noqa: B904 - as Lightning's `_call_and_handle_interrupt`

    def other_exit(argv):
        raise SystemExit(1)

    with pytest.raises(SystemExit) as exit_info:
        run_reporting_errors(lightning_like, ["fit"], "rlrt fit")
    assert exit_info.value.code == INTERRUPTED == 130
    assert capsys.readouterr().err == "rlrt: interrupted (Ctrl-C)\n"
    with pytest.raises(SystemExit) as exit_info:  # an exit of its own stays what it was
        run_reporting_errors(other_exit, ["fit"], "rlrt fit")
    assert exit_info.value.code == 1 and capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as exit_info:  # --debug: Lightning's exit, as it was
        run_reporting_errors(lightning_like, ["fit", "--debug"], "rlrt fit")
    assert exit_info.value.code == 1
