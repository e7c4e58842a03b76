"""`rlrt cache` encodes every split in one pass: one `trainer.predict`, so the encoders go to the
device once, with batches that never mix two splits or images with texts, on any process count."""

from pathlib import Path

import numpy as np
import pytest
from lightning import Trainer
from torch.utils.data import DistributedSampler

from rlrt.cache.builder import Segment, Segments
from rlrt.cache.reader import SplitCacheReader
from tests.test_feature_cache import build_cache


class Rows:
    """A row dataset of `n` items, as `SkipDone` gives them."""

    def __init__(self, n: int, tag: str) -> None:
        self.n, self.tag = n, tag

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"row": index, "tag": self.tag}


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_no_batch_straddles_two_segments_on_any_rank(world_size, batch_size):
    sizes = [7, 1, 12, 4]
    segments = [Segment(Path(f"s{i}"), "text", Rows(n, f"s{i}")) for i, n in enumerate(sizes)]
    data = Segments(segments, batch_size, world_size)
    assert len(data) % (batch_size * world_size) == 0
    real = []
    for rank in range(world_size):
        sampler = DistributedSampler(data, world_size, rank, shuffle=False)
        order = list(sampler)
        assert len(order) == len(data) // world_size  # no padding added by the sampler
        for first in range(0, len(order), batch_size):
            items = [data[i] for i in order[first : first + batch_size]]
            assert len({item["segment"] for item in items}) == 1
            real += [(item["tag"], item["row"]) for item in items if not item.get("skip")]
    expected = [(f"s{i}", row) for i, n in enumerate(sizes) for row in range(n)]
    assert sorted(real) == sorted(expected)  # every row dealt once, fillers skipped


def test_every_split_is_encoded_in_one_predict(
    tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    calls = []
    predict = Trainer.predict

    def counted(self, *args, **kwargs):
        calls.append(len(kwargs["dataloaders"].dataset.segments))
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "predict", counted)
    build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    assert calls == [6]  # images and texts of train, val and test, one pass
    for split in ("train", "val", "test"):
        reader = SplitCacheReader(tmp_path / "cache" / split)
        assert reader.manifest["complete"] is True
        assert np.isfinite(np.asarray(reader.text_embedding, dtype=np.float32)).all()
