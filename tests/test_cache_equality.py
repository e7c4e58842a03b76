"""The cache-equality promise of `tests/cache_equality.py`, checked on arrays made here."""

import json

import numpy as np
import pytest

from tests.cache_equality import assert_same_cache, cache_differences, float16_steps


def slow_steps(a: float, b: float) -> int:
    """float16 values after min(a, b) up to max(a, b), counted one `nextafter` at a time."""
    low, high = sorted((np.float16(a), np.float16(b)))
    steps = 0
    while low < high:
        low = np.nextafter(low, np.float16(np.inf))
        steps += 1
    return steps


def test_float16_steps_match_counting_with_nextafter():
    rng = np.random.default_rng(0)
    a = rng.normal(scale=3.0, size=400).astype(np.float16)
    # neighbours a few steps away, across zero, powers of two and subnormals
    b = a.copy()
    for i in range(len(b)):
        for _ in range(i % 4):
            b[i] = np.nextafter(b[i], np.float16(np.inf) if i % 2 else np.float16(-np.inf))
    extra_a = np.array([0.0, -0.0, 1.0, 2.0, -6e-8, 6e-8, -1.0], dtype=np.float16)
    extra_b = np.array([-0.0, 0.0, np.nextafter(np.float16(1), np.float16(0)), 2.0, 6e-8, 0, 1.0])
    a, b = np.concatenate([a, extra_a]), np.concatenate([b, extra_b.astype(np.float16)])
    expected = [slow_steps(x, y) for x, y in zip(a, b)]
    np.testing.assert_array_equal(float16_steps(a, b), expected)


def write_cache(folder, tokens, mask, manifest_extra=None):
    for split in ("train", "val", "test"):
        split_folder = folder / split
        split_folder.mkdir(parents=True)
        (split_folder / "manifest.json").write_text(
            json.dumps({"split": split, **(manifest_extra or {})})
        )
        (split_folder / "ids.json").write_text(json.dumps(["a", "b"]))
        np.save(split_folder / "image_tokens.npy", tokens)
        np.save(split_folder / "image_embedding.npy", tokens[:, 0])
        np.save(split_folder / "text_tokens.npy", tokens)
        np.save(split_folder / "text_embedding.npy", tokens[:, 0])
        np.save(split_folder / "text_mask.npy", mask)
        for name in ("image_done", "text_done"):
            np.save(split_folder / f"{name}.npy", np.ones(2, dtype=bool))
        np.save(split_folder / "sample_image_row.npy", np.arange(2))
        np.save(split_folder / "image_stats.npy", np.zeros((2, 2), dtype=np.int64))


@pytest.fixture
def cache_pair(tmp_path):
    tokens = np.array([[0.5, -1.25, 3.0], [1e-3, 0.0, -2.0]], dtype=np.float16)
    mask = np.array([[True, False, True], [True, True, True]])
    write_cache(tmp_path / "one", tokens, mask)
    return tmp_path, tokens, mask


def test_one_float16_step_is_the_same_cache_and_two_are_not(cache_pair):
    root, tokens, mask = cache_pair
    one_step = tokens.copy()
    one_step[0, 1] = np.nextafter(one_step[0, 1], np.float16(0))
    write_cache(root / "near", one_step, mask)
    assert_same_cache(root / "one", root / "near")

    two_steps = one_step.copy()
    two_steps[0, 1] = np.nextafter(two_steps[0, 1], np.float16(0))
    write_cache(root / "far", two_steps, mask)
    problems = cache_differences(root / "one", root / "far")
    # every split, each feature array holding that element, names the place and the size
    assert len(problems) == 3 * 2
    assert "train/image_tokens.npy: 1 elements differ by more than 1 float16 step" in problems[0]
    assert "worst 2 steps at (0, 1)" in problems[0]


def test_masks_and_manifests_must_be_equal(cache_pair):
    root, tokens, mask = cache_pair
    flipped = mask.copy()
    flipped[0, 1] = True
    write_cache(root / "mask", tokens, flipped)
    assert cache_differences(root / "one", root / "mask") == [
        f"{split}/text_mask.npy: 1 elements differ" for split in ("train", "val", "test")
    ]
    write_cache(root / "manifest", tokens, mask, {"encoders": {"text": {"layers": [1, 2]}}})
    assert cache_differences(root / "one", root / "manifest")[0] == (
        "train/manifest.json: field 'encoders' differs"
    )
