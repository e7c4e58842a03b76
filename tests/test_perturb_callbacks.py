"""The perturbation callbacks: they apply the pure functions and carry the protocol."""

import pytest
import torch
from lightning import Callback

from callbacks import MissingModality, ModalityNoise
from callbacks.perturb import missing_masks, noise_selection
from tests.test_system import make_batch, make_model


def text_batch(n=200):
    return {
        "id": [f"m{i}" for i in range(n)],
        "image": torch.full((n, 3, 8, 8), 128, dtype=torch.uint8),
        "text": [f"words of sample {i} here" for i in range(n)],
        "image_present": torch.ones(n, dtype=torch.bool),
        "text_present": torch.ones(n, dtype=torch.bool),
    }


def test_missing_modality_uses_the_split_and_leaves_the_strategy_out_of_the_batch():
    callback = MissingModality(train_rate=0.2, eval_rate=0.7, eval_type="text", seed=4)
    batch = text_batch()
    callback.on_test_batch_start(None, None, batch, 0)
    _, drop_text = missing_masks(batch["id"], rate=0.7, missing_type="text", seed=4, split="test")
    assert torch.equal(batch["text_present"], ~drop_text)
    batch = text_batch()
    MissingModality(train_rate=0.5, strategy="zero").on_train_batch_start(None, None, batch, 0)
    assert not batch["image_present"].all()
    assert "missing_strategy" not in batch  # the strategy goes to the model, not the batch
    with pytest.raises(ValueError, match="strategy"):
        MissingModality(strategy="mean")


def test_the_strategy_put_in_effect_replaces_the_models_own(image_encoder, text_encoder):
    dummy_model = make_model(image_encoder, text_encoder, missing_strategy="dummy")
    zero_model = make_model(image_encoder, text_encoder, missing_strategy="zero")
    batch = make_batch()
    batch["image_present"][:3] = False
    by_zero_model = zero_model.encode(batch)
    by_dummy = dummy_model.encode(batch)
    assert dummy_model.use_missing_strategy("zero") == "dummy"
    switched = dummy_model.encode(batch)
    assert dummy_model.use_missing_strategy(None) == "zero"  # None: back to the hparam
    assert dummy_model.missing_strategy == "dummy"
    assert torch.equal(switched.image_embedding, by_zero_model.image_embedding)
    assert (switched.image_embedding[:3] == 0).all()
    assert not torch.equal(by_dummy.image_embedding, switched.image_embedding)
    assert torch.equal(by_dummy.image_embedding[3:], switched.image_embedding[3:])
    with pytest.raises(ValueError, match="missing_strategy must be"):
        dummy_model.use_missing_strategy("mean")


def test_modality_noise_noises_evaluation_batches_only():
    callback = ModalityNoise(text_level=10, seed=2)
    # no training hook of its own: Lightning's no-op Callback.on_train_batch_start
    assert ModalityNoise.on_train_batch_start is Callback.on_train_batch_start
    batch = text_batch()
    callback.on_test_batch_start(None, None, batch, 0)
    chosen = noise_selection(batch["id"], modality="text", seed=2, split="test")
    for sample_text, picked in zip(batch["text"], chosen.tolist()):
        assert (sample_text == "_ _ _ _ _") == picked  # level 10: every word of the chosen half
    assert (batch["image"] == 128).all()  # image level 0: untouched
    image = ModalityNoise(image_level=5, seed=2)
    batch = text_batch()
    image.on_validation_batch_start(None, None, batch, 0)
    changed = (batch["image"] != 128).flatten(1).any(dim=1)
    assert torch.equal(changed, noise_selection(batch["id"], modality="image", seed=2, split="val"))


def test_protocols_record_every_setting(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder, missing_strategy="zero")
    protocol = MissingModality(eval_rate=0.7, eval_type="both", seed=3).protocol(model)
    assert protocol == {
        "missing_strategy": "zero",
        "missing_train_rate": 0.0,
        "missing_train_type": "both",
        "missing_eval_rate": 0.7,
        "missing_eval_type": "both",
        "missing_seed": 3,
    }
    assert ModalityNoise(image_level=3, seed=1).protocol() == {
        "noise_image_level": 3,
        "noise_text_level": 0.0,
        "noise_fraction": 0.5,
        "noise_seed": 1,
    }
    with pytest.raises(ValueError, match="noise level"):
        ModalityNoise(text_level=12)
