"""The LightningModule: freezing, the loss, missing inputs, checkpoints."""

import copy

import pytest
import torch
from lightning import Trainer
from torch.utils.data import DataLoader

from rlrt.encoders import FrozenImageEncoder
from rlrt.system import RLRT


def make_batch(n=6, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = ["love", "space robot", "the ghost house", "war army battle", "funny song", ""]
    return {
        "image": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        "text": [words[i % len(words)] for i in range(n)],
        "label": torch.randint(0, num_classes, (n,), generator=g),
        "id": [f"s{i}" for i in range(n)],
        "image_present": torch.ones(n, dtype=torch.bool),
        "text_present": torch.ones(n, dtype=torch.bool),
    }


def collate_one(items):
    return items[0]


def make_model(image_encoder, text_encoder, **kwargs):
    kwargs = {
        "num_classes": 3,
        "common_dim": 8,
        "fbp_window": 2,
        "fusion_dim": 8,
        "hidden_dim": 16,
        "lr": 1e-2,
        **kwargs,
    }
    return RLRT(image_encoder=image_encoder, text_encoder=text_encoder, **kwargs)


def fit_steps(model, steps=3, tmp_path=None):
    loader = DataLoader(
        [make_batch(seed=i) for i in range(steps)], batch_size=1, collate_fn=collate_one
    )
    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, loader)
    return trainer


def test_training_leaves_encoders_bit_identical_and_moves_the_head(
    image_encoder, text_encoder, tmp_path
):
    model = make_model(image_encoder, text_encoder)
    model.image_encoder.load()  # the weights are read on first use
    model.text_encoder.load()
    frozen = {
        k: v.clone() for k, v in model.state_dict().items() if k.startswith(("image_", "text_"))
    }
    head = {
        k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("image_", "text_"))
    }
    assert frozen and head
    fit_steps(model, tmp_path=tmp_path)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    moved = [k for k, v in head.items() if v.is_floating_point() and not torch.equal(after[k], v)]
    assert any(k.startswith("molt.") for k in moved) and any(k.startswith("fusion.") for k in moved)
    model.train()
    assert not model.image_encoder.training and not model.text_encoder.training
    assert model.fusion.training
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.image_encoder.parameters())


def test_loss_is_task_plus_beta_cca(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder, beta=0.5, dropout=0.0).train()
    model.cca.warmup_samples = 0  # the default waits for 10 x common_dim samples
    batch = make_batch()
    logits, h_i, h_t = model(model.encode(batch))
    expected_task = torch.nn.functional.cross_entropy(logits, batch["label"])
    expected_cca = copy.deepcopy(model.cca)(h_i, h_t).float()  # the same running state
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, value)
    model.log_dict = lambda *a, **kw: None
    loss = model._shared_step(batch, "train")
    torch.testing.assert_close(loss, expected_task + 0.5 * expected_cca)
    torch.testing.assert_close(logged["train/cca_corr_running_step"], 1 - expected_cca)
    assert 0 < expected_cca.item() < 1
    assert model.cca.seen.item() == 6  # the step updated the running statistics
    # evaluation: the loss is the task loss, the running statistics stay as they were
    model.eval()
    torch.testing.assert_close(model._shared_step(batch, "val"), expected_task)
    assert model.cca.seen.item() == 6 and "val/cca" not in logged


def test_a_degenerate_cca_configuration_is_refused_unless_allowed(image_encoder, text_encoder):
    with pytest.raises(ValueError, match=r"cca_window=100 .* at least 640 .*model.cca_window"):
        make_model(image_encoder, text_encoder, common_dim=64, cca_window=100)
    for ok in ({"cca_allow_degenerate": True}, {"beta": 0.0}):
        make_model(image_encoder, text_encoder, common_dim=64, cca_window=100, **ok)
    make_model(image_encoder, text_encoder, common_dim=64, cca_window=640)


def latents(model, batches):
    """`h_i`, `h_t` `(L_s, N, d_c)` of `batches`, concatenated (no gradient)."""
    with torch.no_grad():
        pairs = [model(model.encode(batch))[1:] for batch in batches]
    return torch.cat([p[0] for p in pairs], 1), torch.cat([p[1] for p in pairs], 1)


def test_validation_logs_the_held_out_correlation_of_the_whole_split(
    image_encoder, text_encoder, tmp_path
):
    """`val/cca_corr` is out of sample: the directions fitted on the model's training features
    (`fit_moments`), scored on the whole validation split, against NumPy."""
    from rlrt.alignment import noise_floor
    from tests.cca_reference import out_of_sample

    for beta in (0.1, 0.0):  # measured with and without the loss (`no_cca` is compared on it)
        model = make_model(image_encoder, text_encoder, beta=beta).eval()
        batches = [make_batch(seed=i) for i in range(4)]
        fit_x, fit_y = latents(model, [make_batch(seed=10 + i) for i in range(4)])
        model.fit_moments.update(fit_x, fit_y, torch.ones(fit_x.shape[1], dtype=torch.bool))
        held_x, held_y = latents(model, batches)
        loader = DataLoader(batches, batch_size=1, collate_fn=collate_one)
        trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        (metrics,) = trainer.validate(model, loader, verbose=False)
        expected = [
            out_of_sample(
                fit_x[layer].double().numpy(),
                fit_y[layer].double().numpy(),
                held_x[layer].double().numpy(),
                held_y[layer].double().numpy(),
                drop_ones=True,
            )
            for layer in range(len(model.molt))
        ]
        for layer, value in enumerate(expected):
            assert metrics[f"val/cca_corr_layer{layer}"] == pytest.approx(value, abs=1e-5)
        assert metrics["val/cca_corr"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
        # 24 samples fitted, 24 scored, 8 - 1 directions
        floor = noise_floor(24, 24, 7, 1e-3)
        assert metrics["val/cca_corr_noise_floor"] == pytest.approx(floor, rel=1e-6)
        assert -1 <= metrics["val/cca_corr"] <= 1


def test_missing_flags_substitute_dummy_inputs(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder).eval()
    batch = make_batch()
    batch["image_present"][1] = False
    batch["text_present"][2] = False
    features = model.encode(batch)
    by_hand = copy.deepcopy(batch)
    by_hand["text"][2] = ""
    with torch.no_grad():
        ones_embedding = image_encoder.visual(torch.ones(1, 3, 32, 32))
    manual_text = text_encoder([by_hand["text"][2]])
    torch.testing.assert_close(features.text_embedding[2], manual_text[2][0])
    torch.testing.assert_close(features.image_embedding[1], ones_embedding[0])
    torch.testing.assert_close(features.image_embedding[0], image_encoder(batch["image"][:1])[2][0])

    zero = make_model(image_encoder, text_encoder, missing_strategy="zero").eval()
    zf = zero.encode(batch)
    assert torch.equal(zf.image_tokens[:, 1], torch.zeros_like(zf.image_tokens[:, 1]))
    assert torch.equal(zf.text_embedding[2], torch.zeros_like(zf.text_embedding[2]))
    assert zf.image_embedding[0].abs().sum() > 0


def test_cca_uses_only_samples_with_both_modalities(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder).train()
    model.cca.warmup_samples = 0
    batch = make_batch()
    _, h_i, h_t = model(model.encode(batch))
    both = torch.tensor([True, True, False, True, True, False])
    expected = copy.deepcopy(model.cca)(h_i[:, both], h_t[:, both]).float()
    torch.testing.assert_close(model.correlation_loss(h_i, h_t, both), expected)
    assert model.cca.seen.item() == 4
    fresh = make_model(image_encoder, text_encoder).train()
    one = torch.tensor([True] + [False] * 5)
    assert fresh.correlation_loss(h_i, h_t, one).item() == 0.0


def test_checkpoint_holds_head_and_identity_not_encoder_weights(
    image_encoder, text_encoder, tmp_path
):
    model = make_model(image_encoder, text_encoder)
    trainer = fit_steps(model, steps=1, tmp_path=tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert not any(
        k.startswith(("image_encoder.", "text_encoder.")) for k in checkpoint["state_dict"]
    )
    assert checkpoint["rlrt_encoders"]["image"]["layers"] == [1, 2]
    head_bytes = sum(v.numel() * v.element_size() for v in checkpoint["state_dict"].values())
    encoder_bytes = sum(p.numel() * p.element_size() for p in text_encoder.parameters())
    assert head_bytes < encoder_bytes
    # rebuilt from hparams (the encoders come back from their configs), same predictions
    restored = RLRT.load_from_checkpoint(path, weights_only=True).eval()
    model.eval()
    batch = make_batch()
    torch.testing.assert_close(restored(restored.encode(batch))[0], model(model.encode(batch))[0])


def test_checkpoint_from_before_the_fusion_switch_loads_as_layer_weights(
    image_encoder, text_encoder, tmp_path
):
    """A checkpoint written before `fusion` and the running L_CCA statistics existed: no `fusion`
    hyperparameter, no `cca.*` buffers. It is the layer-weights head and loads as one."""
    model = make_model(image_encoder, text_encoder, fusion="layer_weights")
    trainer = fit_steps(model, steps=1, tmp_path=tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    old = torch.load(path, weights_only=True)
    del old["hyper_parameters"]["fusion"]
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if not k.startswith("cca.")}
    old.pop("rlrt_digest")
    assert any(k.startswith("fusion.aggregate.") for k in old["state_dict"])

    pristine = copy.deepcopy(old)
    restored = make_model(image_encoder, text_encoder, fusion="layer_weights")
    restored.on_load_checkpoint(old)
    restored.load_state_dict(old["state_dict"])
    model.eval(), restored.eval()
    batch = make_batch()
    torch.testing.assert_close(restored(restored.encode(batch))[0], model(model.encode(batch))[0])
    assert restored.cca.seen.item() == 0  # the running statistics start afresh

    attention = make_model(image_encoder, text_encoder)
    with pytest.raises(ValueError, match="fusion='layer_weights' but the config gives 'attention'"):
        attention.on_load_checkpoint(pristine)


def test_checkpoint_from_other_encoder_layers_is_refused(
    image_encoder, text_encoder, tiny_vit_config, tmp_path
):
    model = make_model(image_encoder, text_encoder)
    trainer = fit_steps(model, steps=1, tmp_path=tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    other = FrozenImageEncoder(
        config_file=str(tiny_vit_config), image_size=32, layers=[0, 2], token_grid=2
    )
    mismatched = make_model(other, text_encoder)
    checkpoint = torch.load(path, weights_only=True)
    with pytest.raises(
        ValueError, match=r"image encoder layers=\[1, 2\] but the config gives \[0, 2\]"
    ):
        mismatched.on_load_checkpoint(checkpoint)


def test_multilabel_task_uses_bce_and_f1(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder, task="multilabel", num_classes=4).eval()
    batch = make_batch()
    batch["label"] = (torch.rand(6, 4) > 0.5).float()
    logits, _, _ = model(model.encode(batch))
    torch.testing.assert_close(
        model.task_loss(logits, batch["label"]),
        torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"]),
    )
    assert set(model.test_metrics.keys()) == {"test/f1_micro", "test/f1_macro"}


def test_an_empty_batch_is_skipped(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder)
    batch = make_batch()
    empty = {k: v[:0] for k, v in batch.items()}
    assert model.training_step(empty, 0) is None


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_the_best_checkpoint_is_chosen_by_the_task_metric(
    image_encoder, text_encoder, tmp_path, task
):
    """`monitor: task_metric` (the shipped trainer configs): F1-macro for multi-label models,
    accuracy otherwise, never the loss (which carries beta * L_CCA)."""
    from lightning.pytorch.loggers import CSVLogger

    from rlrt.engine.checkpoints import RunCheckpoint

    model = make_model(image_encoder, text_encoder, task=task, num_classes=4, lr=5e-2)
    batches = []
    for seed in range(3):
        batch = make_batch(num_classes=4, seed=seed)
        if task == "multilabel":
            batch["label"] = torch.rand(6, 4, generator=torch.Generator().manual_seed(seed)) > 0.5
        batches.append(batch)
    loader = DataLoader(batches, batch_size=1, collate_fn=collate_one)
    callback = RunCheckpoint(dirpath=tmp_path / "ckpt", monitor="task_metric", mode="max")
    trainer = Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="log"),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader, loader)
    metric = "val/f1_macro" if task == "multilabel" else "val/acc"
    assert callback.monitor == metric
    import pandas as pd

    logged = pd.read_csv(next((tmp_path / "log").rglob("metrics.csv")))[metric].dropna()
    assert len(logged) == 4
    assert callback.best_model_score.item() == pytest.approx(logged.max())


def test_non_finite_cached_features_stop_with_the_sample_ids(image_encoder, text_encoder):
    """A cache row the open-time sample missed: the ids and `--verify`, not a LinAlgError."""
    model = make_model(image_encoder, text_encoder).eval()
    batch = make_batch()
    with torch.no_grad():
        features = model.encode(batch)
    cached = {**batch, "features": features, "dummy_features": features}
    assert model.features_of(cached).batch_size == 6  # finite: used as they are
    features.text_tokens[1, 4, 0, 1] = float("nan")  # layer 1, sample s4
    features.image_embedding[1, 0] = float("inf")  # sample s1
    fresh = make_model(image_encoder, text_encoder).eval()
    with pytest.raises(ValueError, match=r"sample\(s\) \['s1', 's4'\].*--verify"):
        fresh.features_of(cached)
    # Each sample is checked the first time it is met (the rows of a cache do not change under a
    # run: its writer holds the lock), so steady steps never wait for the device's answer.
    assert model.features_of(cached).batch_size == 6


def test_validation_with_one_layer_pair_logs_its_correlation(tiny_vit_config, tiny_llama_dir):
    """torchmetrics returns a one-element result as a 0-d tensor: one layer pair still logs."""
    from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder

    image = FrozenImageEncoder(config_file=str(tiny_vit_config), image_size=32, layers=1)
    text = FrozenTextEncoder(model_name_or_path=str(tiny_llama_dir), layers=1, segments=4)
    model = make_model(image, text, beta=0.1).eval()
    assert len(model.molt) == 1
    loader = DataLoader(
        [make_batch(seed=i) for i in range(3)], batch_size=1, collate_fn=collate_one
    )
    fit_x, fit_y = latents(model, [make_batch(seed=10 + i) for i in range(3)])
    model.fit_moments.update(fit_x, fit_y, torch.ones(fit_x.shape[1], dtype=torch.bool))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(model, loader, verbose=False)
    assert metrics["val/cca_corr"] == pytest.approx(metrics["val/cca_corr_layer0"])
    assert -1 <= metrics["val/cca_corr"] <= 1  # out of sample: signed
