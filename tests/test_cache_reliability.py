"""A damaged feature cache, or two `rlrt cache` runs into one folder: one line, nothing replaced."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from data_modules import DemoMMIMDBDataModule
from rlrt.cache.format import CacheBusyError, CacheCorruptError
from rlrt.cache.lock import LOCK_NAME, cache_write_lock
from rlrt.cache.reader import SplitCacheReader, verify_split
from rlrt.cli import main
from rlrt.commands.cache import run_cache
from tests.test_cli import demo_args


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_vit_config, tiny_llama_dir):
    """One cache built for the module; tests damage copies of it. Returns (args, cache)."""
    root = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        args = demo_args(root, tiny_vit_config, tiny_llama_dir, num_movies=60)
        run_cache([*args, f"--data.init_args.feature_cache={root / 'cache'}", "--splits=train"])
    return args, root / "cache"


@pytest.fixture()
def cache(built, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(built[1], tmp_path / "cache")
    return tmp_path / "cache"


def rlrt_cache(built, cache, capsys, *extra):
    """`rlrt cache` through the console entry point: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(
            [
                "cache",
                *built[0],
                f"--data.init_args.feature_cache={cache}",
                "--splits=train",
                *extra,
            ]
        )
        status = 0
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("rlrt: error: ")]
    assert len(errors) == (status != 0) and "Traceback" not in err
    return status, out, "".join(f"{line}\n" for line in errors)


def save_like(path, array):
    np.save(path, array)


def zero_bytes(split):
    (split / "text_tokens.npy").write_bytes(b"")
    return "text_tokens.npy"


def garbage_header(split):
    (split / "image_embedding.npy").write_bytes(b"\x93NUMPY\x01\x00garbage" + bytes(64))
    return "image_embedding.npy"


def wrong_shape(split):
    rows = np.load(split / "text_embedding.npy")
    save_like(split / "text_embedding.npy", rows[:-1])
    return "text_embedding.npy"


def wrong_dtype(split):
    rows = np.load(split / "image_tokens.npy")
    save_like(split / "image_tokens.npy", rows.astype(np.float32))
    return "image_tokens.npy"


def row_out_of_range(split):
    rows = np.load(split / "sample_image_row.npy")
    rows[3] = 10_000
    save_like(split / "sample_image_row.npy", rows)
    return "sample_image_row.npy"


def manifest_list(split):
    (split / "manifest.json").write_text("[1, 2]")
    return "manifest.json"


def manifest_malformed(split):
    (split / "manifest.json").write_text('{"format_version": 1,')
    return "manifest.json"


def manifest_missing_field(split):
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["token_pooling"] = "none"
    (split / "manifest.json").write_text(json.dumps(manifest))
    return "manifest.json"


def nan_first_row(split):
    tokens = np.load(split / "text_tokens.npy", mmap_mode="r+")
    tokens[0, 0, 0, 0] = np.nan
    tokens.flush()
    return "text_tokens.npy"


def ids_not_list(split):
    (split / "ids.json").write_text('{"a": 1}')
    return "ids.json"


def ids_missing(split):
    (split / "ids.json").unlink()
    return "ids.json"


def array_missing(split):
    (split / "image_tokens.npy").unlink()
    return "image_tokens.npy"


def array_truncated(split):
    path = split / "text_tokens.npy"
    path.write_bytes(path.read_bytes()[:-100])
    return "text_tokens.npy"


DAMAGES = [
    zero_bytes,
    garbage_header,
    wrong_shape,
    wrong_dtype,
    row_out_of_range,
    manifest_list,
    manifest_malformed,
    manifest_missing_field,
    nan_first_row,
    ids_not_list,
    ids_missing,
    array_missing,
    array_truncated,
]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_a_damaged_split_is_refused_on_open_in_one_line_naming_the_file(cache, damage):
    name = damage(cache / "train")
    with pytest.raises(CacheCorruptError) as error:
        SplitCacheReader(cache / "train")
    message = str(error.value)
    assert "\n" not in message
    assert str(cache / "train" / name) in message and "--overwrite" in message


@pytest.mark.parametrize("damage", [zero_bytes, manifest_list, row_out_of_range])
def test_rlrt_cache_on_a_damaged_split_says_so_and_replaces_it_only_with_overwrite(
    built, cache, capsys, damage
):
    name = damage(cache / "train")
    before = (cache / "train" / name).read_bytes()
    status, out, err = rlrt_cache(built, cache, capsys)
    assert status == 2 and "complete already" not in out
    assert err.count("\n") == 1 and err.startswith("rlrt: error: ")
    assert str(cache / "train" / name) in err and "--overwrite" in err
    assert (cache / "train" / name).read_bytes() == before  # nothing replaced unasked
    status, out, err = rlrt_cache(built, cache, capsys, "--overwrite")
    assert status == 0, err
    assert len(SplitCacheReader(cache / "train")) == 42


def test_training_from_a_cache_with_non_finite_rows_stops_before_the_first_step(built, cache):
    """NaN features used to reach the loss (LinAlgError); the sample read on open finds them."""
    nan_first_row(cache / "train")
    data = DemoMMIMDBDataModule(
        root=str(built[1].parent / "demo_data"),
        num_movies=60,
        image_size=32,
        feature_cache=str(cache),
    )
    with pytest.raises(CacheCorruptError, match=r"text_tokens\.npy is damaged.*row 0 holds NaN"):
        data.setup("fit")


def test_an_unfinished_build_with_a_damaged_file_is_resumed_only_after_overwrite(
    built, cache, capsys
):
    (cache / "train" / "manifest.json").unlink()
    (cache / "train" / "text_done.npy").write_bytes(b"")  # e.g. a crash of a concurrent run
    status, _, err = rlrt_cache(built, cache, capsys)
    assert status == 2 and str(cache / "train" / "text_done.npy") in err
    assert "--overwrite" in err
    status, _, err = rlrt_cache(built, cache, capsys, "--overwrite")
    assert status == 0, err
    assert len(verify_split(cache / "train")) == 42


def test_verify_finds_a_non_finite_row_the_open_time_sample_misses(built, cache, capsys):
    tokens = np.load(cache / "train" / "text_embedding.npy", mmap_mode="r+")
    tokens[20, 1] = np.inf  # between the rows sampled on open (42 rows, 8 sampled)
    tokens.flush()
    del tokens
    SplitCacheReader(cache / "train")  # the cheap check does not read row 20
    with pytest.raises(CacheCorruptError, match=r"text_embedding\.npy.*row 20 holds NaN"):
        verify_split(cache / "train")
    status, out, err = rlrt_cache(built, cache, capsys, "--verify")
    assert status == 2 and "complete already" not in out
    assert err.count("\n") == 1 and "text_embedding.npy" in err and "row 20" in err


def test_verify_of_a_sound_cache_exits_0_with_a_summary(built, cache, capsys):
    status, out, err = rlrt_cache(built, cache, capsys, "--verify")
    assert status == 0, err
    assert "rlrt cache: verify: ok: dummy, train" in out


def test_a_second_rlrt_cache_into_a_locked_folder_refuses_at_once(built, cache, capsys):
    before = {p: p.read_bytes() for p in (cache / "train").iterdir()}
    (cache / "train" / "manifest.json").unlink()  # an unfinished build the other run is doing
    with cache_write_lock(cache):
        status, out, err = rlrt_cache(built, cache, capsys)
        assert status == 2 and err.count("\n") == 1
        assert f"{cache} is being written by another `rlrt cache`" in err
        assert "wait for it" in err
        assert not (cache / "train" / "manifest.json").exists()
        with pytest.raises(CacheBusyError):
            with cache_write_lock(cache):
                pass
    for path, content in before.items():
        if path.name != "manifest.json":
            assert path.read_bytes() == content


def test_the_lock_held_by_another_process_names_its_pid(built, cache, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, sys
                fd = os.open({str(cache / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, str(os.getpid()).encode())
                print("locked", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, _, err = rlrt_cache(built, cache, capsys)
        assert status == 2 and f"(pid {holder.pid})" in err
        # a reader of a complete split is not bothered by the writer; of an incomplete one it is
        assert len(SplitCacheReader(cache / "train")) == 42
        (cache / "train" / "manifest.json").unlink()
        with pytest.raises(FileNotFoundError, match=rf"pid {holder.pid}.*building it now"):
            SplitCacheReader(cache / "train")
    finally:
        holder.communicate("", timeout=30)
    with pytest.raises(FileNotFoundError, match="not complete .found an unfinished build"):
        SplitCacheReader(cache / "train")
    status, out, err = rlrt_cache(built, cache, capsys)  # the lock is free again: resumes
    assert status == 0, err
    assert len(SplitCacheReader(cache / "train")) == 42
