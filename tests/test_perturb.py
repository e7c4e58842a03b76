"""The pure perturbation functions, without a Trainer: missing modalities, modality dropout,
noise."""

import random
import re

import pytest
import torch

from callbacks.perturb import (
    apply_missing,
    apply_noise,
    drop_modalities,
    masked_text,
    missing_masks,
    noise_selection,
    noisy_image,
)
from rlrt.missing import MissingFlagsError

IDS = [f"{i:07d}" for i in range(2000)]


def batches_of(ids, size, shuffle_seed=None):
    ids = list(ids)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ids)
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def decisions(ids, size, shuffle_seed=None, **protocol):
    """id -> (image dropped, text dropped), computed batch by batch."""
    out = {}
    for chunk in batches_of(ids, size, shuffle_seed):
        drop_image, drop_text = missing_masks(chunk, **protocol)
        out.update(zip(chunk, zip(drop_image.tolist(), drop_text.tolist())))
    return out


@pytest.mark.parametrize("missing_type", ["image", "text", "both"])
def test_missing_decisions_do_not_depend_on_batching_or_order(missing_type):
    protocol = {"rate": 0.7, "missing_type": missing_type, "seed": 3, "split": "test"}
    reference = decisions(IDS, len(IDS), **protocol)
    for size, shuffle in ((1, None), (7, 0), (128, 1), (333, 2)):
        assert decisions(IDS, size, shuffle, **protocol) == reference


def test_missing_rates_types_and_the_both_split():
    for rate in (0.0, 0.1, 0.5, 0.7, 1.0):
        image, text = missing_masks(IDS, rate=rate, missing_type="both", seed=0, split="test")
        assert not (image & text).any()  # never both
        dropped = (image | text).float().mean().item()
        assert abs(dropped - rate) < 0.04  # binomial(2000, rate): sd <= 0.011
        if rate > 0:
            share = image.sum().item() / (image | text).sum().item()
            assert abs(share - 0.5) < 0.06
    image, text = missing_masks(IDS, rate=1.0, missing_type="image", seed=0, split="test")
    assert image.all() and not text.any()
    image, text = missing_masks(IDS, rate=0.4, missing_type="text", seed=0, split="test")
    assert not image.any() and 0.36 < text.float().mean() < 0.44


def test_missing_sets_are_nested_across_rates_and_differ_by_seed_and_split():
    low = missing_masks(IDS, rate=0.3, missing_type="image", seed=0, split="test")[0]
    high = missing_masks(IDS, rate=0.7, missing_type="image", seed=0, split="test")[0]
    assert not (low & ~high).any()
    other_seed = missing_masks(IDS, rate=0.7, missing_type="image", seed=1, split="test")[0]
    other_split = missing_masks(IDS, rate=0.7, missing_type="image", seed=0, split="val")[0]
    assert not torch.equal(high, other_seed) and not torch.equal(high, other_split)


def test_apply_missing_clears_flags_in_place_and_keeps_absent_ones_absent():
    batch = {
        "id": IDS[:100],
        "image_present": torch.tensor([i % 2 == 0 for i in range(100)]),
        "text_present": torch.ones(100, dtype=torch.bool),
    }
    drop_image, drop_text = missing_masks(
        IDS[:100], rate=0.5, missing_type="both", seed=0, split="train"
    )
    apply_missing(batch, rate=0.5, missing_type="both", seed=0, split="train")
    expected_image = torch.tensor([i % 2 == 0 for i in range(100)]) & ~drop_image
    assert torch.equal(batch["image_present"], expected_image)
    assert torch.equal(batch["text_present"], ~drop_text)
    with pytest.raises(ValueError, match="missing rate"):
        missing_masks(IDS, rate=1.2, missing_type="both", seed=0, split="test")
    with pytest.raises(MissingFlagsError, match="no image_present / text_present"):
        apply_missing({"id": IDS[:3]}, rate=0.5, missing_type="both", seed=0, split="train")


# ------------------------------------------------------------------------- modality dropout


def test_modality_dropout_drops_one_modality_of_pairs_only():
    n = 4000
    image_present = torch.arange(n) % 10 != 0  # 10% already lack the image
    text_present = torch.ones(n, dtype=torch.bool)
    torch.manual_seed(0)
    image, text = drop_modalities(image_present, text_present, 0.3)
    assert image_present.sum() == n - n // 10  # the input flags are left alone
    assert not (~image & ~text).any()  # never both
    assert not (image & ~image_present).any()  # nothing comes back
    had_both = image_present & text_present
    lost = had_both & ~(image & text)
    rate = lost.sum().item() / had_both.sum().item()
    assert 0.27 < rate < 0.33  # binomial(3600, 0.3): sd 0.008
    image_share = (lost & ~image).sum().item() / lost.sum().item()
    assert 0.44 < image_share < 0.56
    torch.manual_seed(0)
    again, _ = drop_modalities(image_present, text_present, 0.3)
    assert torch.equal(again, image)  # seed_everything fixes it
    with pytest.raises(ValueError, match="modality dropout rate"):
        drop_modalities(image_present, text_present, 1.5)


def test_modality_dropout_draws_two_uniforms_per_sample_from_the_global_rng():
    """The draws of the model's former `drop_modalities`, one sample at a time: a dropout run
    seeded as before drops the same modalities as before."""
    generator = torch.Generator().manual_seed(3)
    image_present = torch.rand(300, generator=generator) < 0.8
    text_present = torch.rand(300, generator=generator) < 0.8
    torch.manual_seed(11)
    image, text = drop_modalities(image_present, text_present, 0.4)
    torch.manual_seed(11)
    drop_draws, which_draws = torch.rand(300).tolist(), torch.rand(300).tolist()
    for i in range(300):
        both = bool(image_present[i] and text_present[i])
        dropped = both and drop_draws[i] < 0.4
        loses_image = which_draws[i] < 0.5
        assert bool(image[i]) == (bool(image_present[i]) and not (dropped and loses_image))
        assert bool(text[i]) == (bool(text_present[i]) and not (dropped and not loses_image))


# ------------------------------------------------------------------------------------ noise


def test_noise_selection_is_a_seeded_half_independent_of_batching():
    whole = noise_selection(IDS, modality="image", seed=5, split="test")
    assert 0.46 < whole.float().mean().item() < 0.54
    pieces = [
        noise_selection(c, modality="image", seed=5, split="test") for c in batches_of(IDS, 37)
    ]
    assert torch.equal(torch.cat(pieces), whole)
    text = noise_selection(IDS, modality="text", seed=5, split="test")
    assert not torch.equal(whole, text)  # the two modalities draw their halves independently
    assert noise_selection(IDS, modality="image", seed=5, split="test", fraction=1.0).all()
    with pytest.raises(ValueError, match="modality"):
        noise_selection(IDS, modality="audio", seed=0, split="test")


@pytest.mark.parametrize("level", [1, 3, 10])
def test_image_noise_has_the_protocol_std_on_the_0_255_scale(level):
    grey = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    noisy = noisy_image(grey, level=level, seed=0, split="test", sample_id="a")
    assert noisy.dtype == torch.uint8 and noisy.shape == grey.shape
    diff = noisy.float() - 128.0
    expected = 10.0 * level
    if level < 10:  # no clamping at 128 +/- 4 sd
        assert abs(diff.std().item() - expected) < 0.05 * expected
        assert abs(diff.mean().item()) < 0.1 * expected
    else:  # sd 100 around 128 clamps at 0 and 255: compare with a clamped normal of our own
        reference = (128.0 + expected * torch.randn(200_000)).round().clamp(0, 255) - 128.0
        assert abs(diff.std().item() - reference.std().item()) < 1.5


def test_image_noise_clamps_rounds_scales_one_draw_and_is_seeded():
    white = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    noisy = noisy_image(white, level=5, seed=0, split="test", sample_id="a")
    assert noisy.max() == 255 and (noisy < 255).any()  # clamped, not wrapped around
    again = noisy_image(white, level=5, seed=0, split="test", sample_id="a")
    assert torch.equal(noisy, again)
    other = noisy_image(white, level=5, seed=0, split="test", sample_id="b")
    assert not torch.equal(noisy, other)
    grey = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    one = noisy_image(grey, level=1, seed=0, split="test", sample_id="a").float() - 128
    two = noisy_image(grey, level=2, seed=0, split="test", sample_id="a").float() - 128
    assert (two - 2 * one).abs().max() <= 1.5  # the same draws, scaled (up to rounding)
    assert torch.equal(noisy_image(grey, level=0, seed=0, split="test", sample_id="a"), grey)
    with pytest.raises(ValueError, match="noise level"):
        noisy_image(grey, level=11, seed=0, split="test", sample_id="a")
    with pytest.raises(TypeError, match="uint8"):
        noisy_image(grey.float(), level=1, seed=0, split="test", sample_id="a")


def test_word_masking_rate_whitespace_and_nesting():
    text = "  ".join(f"w{i}" for i in range(5000)) + "\n"
    for level in (0, 2, 5, 10):
        masked = masked_text(text, level=level, seed=0, split="test", sample_id="x")
        words = masked.split()
        assert len(words) == 5000
        assert re.sub(r"\S+", "", masked) == re.sub(r"\S+", "", text)  # separators untouched
        share = sum(w == "_" for w in words) / len(words)
        assert abs(share - 0.1 * level) < 0.025  # binomial(5000, p): sd <= 0.0071
        original = text.split()
        assert all(w in ("_", o) for w, o in zip(words, original))  # a word or its mask
    low = masked_text(text, level=3, seed=0, split="test", sample_id="x").split()
    high = masked_text(text, level=6, seed=0, split="test", sample_id="x").split()
    assert all(h == "_" for lo, h in zip(low, high) if lo == "_")  # nested across levels
    assert masked_text("", level=10, seed=0, split="test", sample_id="x") == ""


def noised(ids, batch_size, shuffle_seed, modality, level):
    """id -> (image, text) after noise, computed batch by batch in a shuffled order."""
    generator = torch.Generator().manual_seed(0)
    images = {
        i: torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=generator) for i in ids
    }
    out = {}
    for chunk in batches_of(ids, batch_size, shuffle_seed):
        batch = {
            "id": chunk,
            "image": torch.stack([images[i] for i in chunk]),
            "text": [f"plot of movie {i} with many words" for i in chunk],
        }
        apply_noise(batch, modality=modality, level=level, seed=1, split="test")
        for row, sample_id in enumerate(chunk):
            out[sample_id] = (batch["image"][row], batch["text"][row])
    return out, images


@pytest.mark.parametrize("modality", ["image", "text"])
def test_apply_noise_touches_the_chosen_half_only_whatever_the_batching(modality):
    ids = IDS[:300]
    reference, images = noised(ids, 300, None, modality, level=6)
    chosen = dict(zip(ids, noise_selection(ids, modality=modality, seed=1, split="test").tolist()))
    for sample_id, (image, text) in reference.items():
        clean_text = f"plot of movie {sample_id} with many words"
        if modality == "image":
            assert torch.equal(image, images[sample_id]) != chosen[sample_id]
            assert text == clean_text
        else:
            assert torch.equal(image, images[sample_id])
            if not chosen[sample_id]:
                assert text == clean_text
    if modality == "text":
        changed = sum(reference[i][1] != f"plot of movie {i} with many words" for i in ids)
        assert changed > 0.4 * len(ids)  # about half chosen, nearly all of them changed at 60%
    for size, shuffle in ((1, 0), (16, 1), (129, 2)):
        other, _ = noised(ids, size, shuffle, modality, level=6)
        for sample_id in ids:
            assert torch.equal(other[sample_id][0], reference[sample_id][0])
            assert other[sample_id][1] == reference[sample_id][1]


def test_apply_noise_refuses_a_batch_without_raw_inputs():
    batch = {"id": ["a"], "features": object(), "label": torch.zeros(1)}
    with pytest.raises(ValueError, match="feature cache"):
        apply_noise(batch, modality="image", level=3, seed=0, split="test")
    assert apply_noise(batch, modality="image", level=0, seed=0, split="test") is batch
