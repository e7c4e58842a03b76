"""The missing-modality path: the flags every batch carries, the substitution both paths share,
and the strategy the `MissingModality` callback puts in effect on the model."""

import pytest
import torch
from lightning import Callback, Trainer
from torch.utils.data import DataLoader

from callbacks import MissingModality
from callbacks.perturb import drop_modalities
from rlrt.features import Features
from rlrt.missing import MissingFlagsError, substitute_missing
from tests.test_system import collate_one, make_batch, make_model

L, B, N_I, D_I, E_I, N_T, D_T, E_T = 2, 9, 3, 4, 5, 6, 7, 3


def random_features(batch: int, generator: torch.Generator) -> Features:
    def normal(*shape):
        return torch.randn(*shape, generator=generator)

    def mask(*shape):
        return torch.rand(*shape, generator=generator) < 0.7

    return Features(
        normal(L, batch, N_I, D_I),
        mask(batch, N_I),
        normal(batch, E_I),
        normal(L, batch, N_T, D_T),
        mask(batch, N_T),
        normal(batch, E_T),
    )


def random_flags(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random `(B,)` flags holding each of the four (image, text) combinations at least once."""
    image = torch.rand(B, generator=generator) < 0.5
    text = torch.rand(B, generator=generator) < 0.5
    image[:4] = torch.tensor([True, True, False, False])
    text[:4] = torch.tensor([True, False, True, False])
    return image, text


def one_sample(features: Features, i: int) -> Features:
    return Features(
        features.image_tokens[:, i : i + 1],
        features.image_mask[i : i + 1],
        features.image_embedding[i : i + 1],
        features.text_tokens[:, i : i + 1],
        features.text_mask[i : i + 1],
        features.text_embedding[i : i + 1],
    )


def concat(samples: list[Features]) -> Features:
    return Features(
        torch.cat([s.image_tokens for s in samples], dim=1),
        torch.cat([s.image_mask for s in samples]),
        torch.cat([s.image_embedding for s in samples]),
        torch.cat([s.text_tokens for s in samples], dim=1),
        torch.cat([s.text_mask for s in samples]),
        torch.cat([s.text_embedding for s in samples]),
    )


def assert_features_equal(got: Features, expected: Features, exact: bool = True) -> None:
    for name in Features.__dataclass_fields__:
        a, b = getattr(got, name), getattr(expected, name)
        if exact or a.dtype == torch.bool:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, msg=lambda m, n=name: f"{n}: {m}")


def by_hand_sample(real: Features, dummy: Features, image: bool, text: bool, strategy: str):
    """One sample's features with its absent modalities replaced, written out field by field."""
    if strategy == "dummy":
        source_image, source_text = (real if image else dummy), (real if text else dummy)
        return Features(
            source_image.image_tokens.clone(),
            source_image.image_mask.clone(),
            source_image.image_embedding.clone(),
            source_text.text_tokens.clone(),
            source_text.text_mask.clone(),
            source_text.text_embedding.clone(),
        )
    return Features(  # zero: values zeroed, masks kept
        real.image_tokens if image else torch.zeros_like(real.image_tokens),
        real.image_mask,
        real.image_embedding if image else torch.zeros_like(real.image_embedding),
        real.text_tokens if text else torch.zeros_like(real.text_tokens),
        real.text_mask,
        real.text_embedding if text else torch.zeros_like(real.text_embedding),
    )


@pytest.mark.parametrize("strategy", ["dummy", "zero"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_substitution_matches_a_per_sample_loop(strategy, seed):
    generator = torch.Generator().manual_seed(seed)
    features, dummy = random_features(B, generator), random_features(1, generator)
    image_present, text_present = random_flags(generator)
    got = substitute_missing(features, image_present, text_present, strategy, dummy)
    expected = concat(
        [
            by_hand_sample(one_sample(features, i), dummy, image, text, strategy)
            for i, (image, text) in enumerate(zip(image_present.tolist(), text_present.tolist()))
        ]
    )
    assert_features_equal(got, expected)
    assert torch.equal(image_present[:4], torch.tensor([True, True, False, False]))  # untouched


@pytest.mark.parametrize("strategy", ["dummy", "zero"])
def test_online_encoding_matches_a_per_sample_loop(image_encoder, text_encoder, strategy):
    model = make_model(image_encoder, text_encoder, missing_strategy=strategy).eval()
    generator = torch.Generator().manual_seed(5)
    batch = make_batch(n=B, seed=5)
    batch["image_present"], batch["text_present"] = random_flags(generator)
    got = model.encode(batch)
    samples = []
    for i, (image, text) in enumerate(
        zip(batch["image_present"].tolist(), batch["text_present"].tolist())
    ):
        real = Features(
            *image_encoder(batch["image"][i : i + 1]), *text_encoder([batch["text"][i]])
        )
        # the dummy inputs, encoded alone: the all-ones normalised image and the empty text
        with torch.no_grad():
            ones = torch.ones(1, 3, 32, 32)
            dummy_image = image_encoder(batch["image"][i : i + 1], torch.tensor([False]))
            torch.testing.assert_close(dummy_image[2], image_encoder.visual(ones).float())
        dummy = Features(*dummy_image, *text_encoder([""]))
        samples.append(by_hand_sample(real, dummy, image, text, strategy))
    assert_features_equal(got, concat(samples), exact=False)


def test_cached_and_online_paths_agree_on_the_same_dummy_features(image_encoder, text_encoder):
    """Online `dummy` feeds the dummy inputs to the encoders; the cached path swaps in their
    features: on features encoded from the same inputs both give the same numbers."""
    model = make_model(image_encoder, text_encoder).eval()
    batch = make_batch(n=B, seed=7)
    batch["image_present"], batch["text_present"] = random_flags(torch.Generator().manual_seed(7))
    online = model.encode(batch)
    everything = torch.ones(B, dtype=torch.bool)
    real = model.encode({**batch, "image_present": everything, "text_present": everything})
    dummy = Features(*image_encoder(batch["image"][:1], torch.tensor([False])), *text_encoder([""]))
    cached = model.features_of({**batch, "features": real, "dummy_features": dummy})
    assert_features_equal(cached, online, exact=False)


class SeesStrategy(Callback):
    """Records the model's strategy in effect at each test batch."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.seen.append(pl_module.missing_strategy)


def evaluator(*callbacks: Callback) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def test_the_callbacks_strategy_reaches_the_model_and_is_restored_after_test(
    image_encoder, text_encoder
):
    model = make_model(image_encoder, text_encoder, missing_strategy="dummy")
    batches = [make_batch(seed=i) for i in range(2)]
    loader = DataLoader(batches, batch_size=1, collate_fn=collate_one)
    missing, spy = MissingModality(eval_rate=0.5, strategy="zero"), SeesStrategy()
    evaluator(missing, spy).test(model, loader)
    assert spy.seen == ["zero", "zero"]
    assert model.missing_strategy == "dummy"  # restored: the model's own
    assert missing.protocol(model)["missing_strategy"] == "zero"  # what the results used
    # no strategy: the model's own applies and is reported
    unset, spy = MissingModality(eval_rate=0.5), SeesStrategy()
    evaluator(unset, spy).test(model, loader)
    assert spy.seen == ["dummy", "dummy"] and unset.protocol(model)["missing_strategy"] == "dummy"


def test_the_models_strategy_is_restored_when_the_stage_fails(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder, missing_strategy="dummy")
    unflagged = make_batch()
    del unflagged["image_present"], unflagged["text_present"]
    loader = DataLoader([unflagged], batch_size=1, collate_fn=collate_one)
    spy = SeesStrategy()
    with pytest.raises(MissingFlagsError):
        evaluator(MissingModality(strategy="zero"), spy).test(model, loader)
    assert spy.seen == ["zero"] and model.missing_strategy == "dummy"


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize(
    "absent", [("image_present",), ("text_present",), ("image_present", "text_present")]
)
def test_a_batch_without_flags_fails_in_one_clear_line(image_encoder, text_encoder, cached, absent):
    model = make_model(image_encoder, text_encoder).train()
    batch = make_batch()
    if cached:
        batch["features"] = model.encode(batch)
        batch["dummy_features"] = one_sample(batch["features"], 0)
    for key in absent:
        del batch[key]
    with pytest.raises(MissingFlagsError) as raised:
        model.training_step(batch, 0)
    message = str(raised.value)
    assert "\n" not in message and not message.startswith("'")
    assert f"the batch has no {' / '.join(absent)}" in message
    assert isinstance(raised.value, KeyError)  # a key the batch lacks


def test_the_models_modality_dropout_applies_the_perturb_function(image_encoder, text_encoder):
    """`modality_dropout` (configs/model/variants) still drops modalities at each training step,
    with the draws of `callbacks.perturb.drop_modalities`; the batch given is left alone."""
    model = make_model(image_encoder, text_encoder, modality_dropout=0.5).train()
    seen = []
    model._shared_step = lambda batch, stage: seen.append(batch)
    batch = make_batch(n=64)
    torch.manual_seed(4)
    model.training_step(batch, 0)
    torch.manual_seed(4)
    image, text = drop_modalities(batch["image_present"], batch["text_present"], 0.5)
    assert torch.equal(seen[0]["image_present"], image)
    assert torch.equal(seen[0]["text_present"], text)
    assert not (image & text).all() and batch["image_present"].all()
