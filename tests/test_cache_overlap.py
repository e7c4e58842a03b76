"""`rlrt cache` keeps the device busy: texts are tokenised in the loader's workers, and rows are
written by one background thread at most `RowWriter.max_in_flight` batches behind the encoders,
whose failures still end the build (naming the folder) and leave their rows to a rerun."""

import errno
import os
import pickle
import threading
import time

import numpy as np
import pytest
import torch

from rlrt.cache.builder import CacheWriteError, RowWriter
from rlrt.cache.reader import SplitCacheReader
from rlrt.cache.sources import split_sources
from rlrt.cache.writer import SplitCacheWriter
from rlrt.encoders import TextTokenizer
from rlrt.engine.errors import user_error_message
from tests.test_feature_cache import build_cache, make_pair

SPLITS = ("train", "val", "test")


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def split_texts(tmp_path, tiny_vit_config, tiny_llama_dir):
    """Each split's texts in row order, and a text encoder as the cache build makes it."""
    data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir)
    data.prepare_data()
    return {s: split_sources(data, s).texts for s in SPLITS}, model.text_encoder


def record_writes(monkeypatch, log, delay=0.0):
    """Make `SplitCacheWriter.write_images` / `write_texts` append `(folder name, kind, rows,
    thread)` to `log` once done, `delay` seconds after being called."""
    for kind in ("images", "texts"):
        original = getattr(SplitCacheWriter, f"write_{kind}")

        def recorded(self, rows, *arrays, _original=original, _kind=kind):
            time.sleep(delay)
            _original(self, rows, *arrays)
            log.append((self.folder.name, _kind, np.array(rows), threading.current_thread()))

        monkeypatch.setattr(SplitCacheWriter, f"write_{kind}", recorded)


def test_the_text_tokenizer_pickles_without_the_model(tiny_vit_config, tiny_llama_dir, in_tmp):
    _, encoder = split_texts(in_tmp, tiny_vit_config, tiny_llama_dir)
    tokenize = encoder.text_tokenizer
    copy = pickle.loads(pickle.dumps(tokenize))
    texts = ["a movie about love", "", "the robot and the ghost " * 20]
    for key, value in tokenize(texts).items():
        assert torch.equal(copy(texts)[key], value)
    assert copy(texts)["input_ids"].shape[1] == encoder.max_length  # truncated as the encoder's
    assert not encoder.is_loaded  # tokenising never needed the weights
    assert len(pickle.dumps(tokenize)) < 2**20


def test_all_empty_texts_get_one_masked_pad_position_on_both_paths(text_encoder):
    inputs = text_encoder.text_tokenizer(["", ""])
    assert inputs["input_ids"].tolist() == [[text_encoder.tokenizer.pad_token_id]] * 2
    assert inputs["attention_mask"].tolist() == [[0], [0]]
    online = text_encoder(["", ""])
    for ours, theirs in zip(text_encoder.encode_tokens(inputs), online):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_texts_are_tokenised_in_the_loader_workers_only(
    in_tmp, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    """With one loader worker, the main process tokenises only the shape probe's and the dummy
    row's empty text; the worker every text of every split; and the cached text features are
    those of `FrozenTextEncoder.forward` on the same texts."""
    calls = in_tmp / "tokenize_calls.txt"  # appended to by every process, the worker included
    original = TextTokenizer.__call__

    def counted(self, texts):
        with open(calls, "a") as log:
            log.write(f"{os.getpid()}\t{len(texts)}\t{texts == [''] * len(texts)}\n")
        return original(self, texts)

    monkeypatch.setattr(TextTokenizer, "__call__", counted)
    build_cache(
        in_tmp, tiny_vit_config, tiny_llama_dir, in_tmp / "cache", "--data.init_args.num_workers=1"
    )
    monkeypatch.setattr(TextTokenizer, "__call__", original)
    lines = [line.split("\t") for line in calls.read_text().splitlines()]
    main = [(int(n), empty == "True") for pid, n, empty in lines if int(pid) == os.getpid()]
    worker = [int(n) for pid, n, _ in lines if int(pid) != os.getpid()]
    texts, encoder = split_texts(in_tmp, tiny_vit_config, tiny_llama_dir)
    assert main == [(1, True), (1, True)]  # `shapes_of` and `build_dummy`, before the predict
    assert sum(worker) == sum(len(t) for t in texts.values())  # each text once, in the worker
    for split in SPLITS:
        reader = SplitCacheReader(in_tmp / "cache" / split)
        tokens, mask, embedding = encoder(texts[split])
        cached = np.asarray(reader.text_tokens, dtype=np.float32).transpose(1, 0, 2, 3)
        np.testing.assert_allclose(cached, tokens.half().float().numpy(), rtol=2e-3, atol=1e-3)
        np.testing.assert_array_equal(np.asarray(reader.text_mask), mask.numpy())
        np.testing.assert_allclose(
            np.asarray(reader.text_embedding, dtype=np.float32),
            embedding.half().float().numpy(),
            rtol=2e-3,
            atol=1e-3,
        )


def test_rows_are_written_on_a_background_thread(
    in_tmp, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    writes = []
    record_writes(monkeypatch, writes)
    build_cache(in_tmp, tiny_vit_config, tiny_llama_dir, in_tmp / "cache")
    split_writes = [w for w in writes if w[0] != "dummy"]  # the dummy rows: written directly
    [thread] = {w[3] for w in split_writes}  # one writer thread, in batch order
    assert thread is not threading.main_thread()
    assert not thread.is_alive()  # stopped by the end of the build
    texts, _ = split_texts(in_tmp, tiny_vit_config, tiny_llama_dir)
    for split in SPLITS:
        rows = np.concatenate([w[2] for w in split_writes if w[:2] == (split, "texts")])
        np.testing.assert_array_equal(rows, np.arange(len(texts[split])))  # each row once


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (RuntimeError("the disk went away"), CacheWriteError),
        (OSError(errno.ENOSPC, "No space left on device"), OSError),  # a user error: one line
    ],
)
def test_a_failed_background_write_ends_the_build_naming_the_folder_and_a_rerun_resumes(
    in_tmp, tiny_vit_config, tiny_llama_dir, monkeypatch, error, raised
):
    reference = in_tmp / "reference"
    build_cache(in_tmp, tiny_vit_config, tiny_llama_dir, reference)
    original = SplitCacheWriter.write_texts
    failed = []

    def failing(self, rows, tokens, mask, embedding):
        if self.folder.name == "train" and len(failed) == 0:
            self._put("text_tokens", rows, tokens.transpose(0, 1).numpy())  # half written
            failed.append(np.array(rows))
            raise error
        original(self, rows, tokens, mask, embedding)

    monkeypatch.setattr(SplitCacheWriter, "write_texts", failing)
    cache = in_tmp / "cache"
    train = cache / "train"
    with pytest.raises(raised, match=f"feature cache {train}: writing .* text rows") as e:
        build_cache(in_tmp, tiny_vit_config, tiny_llama_dir, cache)
    assert str(error) in str(e.value)
    if raised is OSError:
        assert e.value.errno == errno.ENOSPC
        assert str(train) in user_error_message(e.value)
    [rows] = failed
    done = np.load(train / "text_done.npy")
    assert len(rows) > 0 and not done[rows].any()  # the failed batch's rows: left to a rerun
    assert not (train / "manifest.json").exists()
    monkeypatch.setattr(SplitCacheWriter, "write_texts", original)
    build_cache(in_tmp, tiny_vit_config, tiny_llama_dir, cache)
    for split in SPLITS:
        resumed, built = SplitCacheReader(cache / split), SplitCacheReader(reference / split)
        for name in ("text_tokens", "text_embedding", "image_tokens", "image_embedding"):
            np.testing.assert_allclose(
                np.asarray(getattr(resumed, name), dtype=np.float32),
                np.asarray(getattr(built, name), dtype=np.float32),
                rtol=2e-3,
                atol=1e-3,
                err_msg=f"{split} {name}",
            )
        np.testing.assert_array_equal(np.asarray(resumed.text_mask), np.asarray(built.text_mask))


def test_no_more_batches_are_in_flight_than_the_bound(
    in_tmp, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    """With writes slower than encoding, the main process hands over batches until
    `max_in_flight` are not written yet, and never more."""
    writes = []
    record_writes(monkeypatch, writes, delay=0.05)
    in_flight = []
    handed = []
    original = RowWriter.write_on_batch_end

    def counted(self, trainer, pl_module, prediction, *args, **kwargs):
        original(self, trainer, pl_module, prediction, *args, **kwargs)
        handed.append(len(prediction["row"]))
        written = sum(1 for w in writes if w[0] != "dummy")
        in_flight.append(len(handed) - written)

    monkeypatch.setattr(RowWriter, "write_on_batch_end", counted)
    build_cache(in_tmp, tiny_vit_config, tiny_llama_dir, in_tmp / "cache")
    assert all(handed)  # every batch has rows to write (a fresh build): each is one write
    bound = RowWriter().max_in_flight
    assert bound == 2
    assert max(in_flight) == bound  # reached: the writes lag behind the encoders
    assert len(in_flight) > 2 * bound
