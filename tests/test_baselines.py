"""Baselines and ablation switches: what is built, what trains, and the configs that select them."""

from pathlib import Path

import pytest
import torch

from rlrt.engine.lightning_cli import RLRTCLI, parse_only
from tests.test_cli import demo_args
from tests.test_system import fit_steps, make_batch, make_model

REPO = Path(__file__).resolve().parents[1]
VARIANTS = REPO / "configs" / "model" / "variants"
MODEL_CONFIGS = [REPO / "configs" / "model" / "demo.yaml", REPO / "configs" / "model" / "rlrt.yaml"]


@pytest.mark.parametrize(
    "switches",
    [
        {"use_robust": False, "beta": 0.0, "fusion": "layer_weights"},
        {"use_robust": False, "beta": 0.0, "use_text_embedding": False, "fusion": "layer_weights"},
        {"use_robust": False, "beta": 0.0, "use_image_embedding": False, "fusion": "layer_weights"},
    ],
    ids=["late_fusion", "image_only", "text_only"],
)
def test_baselines_build_no_molt_and_every_parameter_gets_a_gradient(
    image_encoder, text_encoder, switches
):
    model = make_model(image_encoder, text_encoder, **switches)
    assert model.molt is None and model.fusion.aggregate is None
    assert not any(k.startswith("molt.") for k in model.state_dict())
    logits, h_image, h_text = model(model.encode(make_batch()))
    assert logits.shape == (6, 3) and h_image is None and h_text is None
    loss = model.task_loss(logits, make_batch()["label"])
    loss.backward()
    # nothing trainable is left without a gradient (DDP's unused-parameter error)
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_full_model_uses_every_trainable_parameter(image_encoder, text_encoder):
    model = make_model(image_encoder, text_encoder)
    batch = make_batch()
    logits, h_image, h_text = model(model.encode(batch))
    both = torch.ones(6, dtype=torch.bool)
    loss = model.task_loss(logits, batch["label"]) + model.correlation_loss(h_image, h_text, both)
    loss.backward()
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_baseline_skips_only_what_its_switches_say(image_encoder, text_encoder):
    # without the robust input but with L_CCA, MoLT is still built (L_CCA trains it)
    model = make_model(image_encoder, text_encoder, use_robust=False, beta=0.1)
    assert model.molt is not None and model.fusion.aggregate is None
    # with the robust input and no L_CCA (the no-CCA ablation) everything but the loss runs
    model = make_model(image_encoder, text_encoder, beta=0.0)
    assert model.molt is not None and model.fusion.layer_embedding is not None


def test_late_fusion_fits_and_its_loss_has_no_cca(image_encoder, text_encoder, tmp_path):
    model = make_model(image_encoder, text_encoder, use_robust=False, beta=0.0)
    before = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    trainer = fit_steps(model, tmp_path=tmp_path)
    assert not any("cca" in key for key in trainer.callback_metrics)
    after = model.fusion.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_modality_dropout_is_rejected_outside_0_1(image_encoder, text_encoder):
    with pytest.raises(ValueError, match="modality_dropout"):
        make_model(image_encoder, text_encoder, modality_dropout=1.5)


@pytest.mark.parametrize("model_config", MODEL_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("variant", sorted(VARIANTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_variant_composes_over_the_model_configs(model_config, variant):
    config = parse_only(
        [
            "--config",
            str(REPO / "configs" / "trainer" / "default.yaml"),
            "--config",
            str(REPO / "configs" / "data" / "demo.yaml"),
            "--config",
            str(model_config),
            "--config",
            str(variant),
        ]
    )
    # the encoder blocks come from the model config, untouched unless the variant sets pairs
    assert config.model.image_encoder.class_path == "rlrt.encoders.FrozenImageEncoder"
    if config.layer_pairs is not None:
        layers = {config.model[s].init_args.layers for s in ("image_encoder", "text_encoder")}
        assert layers == {config.layer_pairs}
    if variant.stem in ("late_fusion", "image_only", "text_only"):
        assert config.model.use_robust is False and config.model.beta == 0.0


def test_layer_pairs_sets_both_encoders():
    config = parse_only(
        [
            "--config",
            str(REPO / "configs" / "trainer" / "default.yaml"),
            "--config",
            str(REPO / "configs" / "data" / "demo.yaml"),
            "--config",
            str(REPO / "configs" / "model" / "demo.yaml"),
            "--layer_pairs=3",
        ]
    )
    assert config.model.image_encoder.init_args.layers == 3
    assert config.model.text_encoder.init_args.layers == 3


def test_late_fusion_through_the_cli(tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir):
    monkeypatch.chdir(tmp_path)
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=32)
    args += ["--config", str(VARIANTS / "late_fusion.yaml"), "--trainer.max_epochs=1"]
    fit = RLRTCLI(args=["fit", *args])
    assert fit.model.molt is None
    checkpoint = torch.load(
        fit.trainer.checkpoint_callback.last_model_path, map_location="cpu", weights_only=False
    )
    assert not any(k.startswith("molt.") for k in checkpoint["state_dict"])
    test = RLRTCLI(
        args=["test", *args, "--ckpt_path", fit.trainer.checkpoint_callback.last_model_path]
    )
    assert "test/f1_macro" in test.test_metrics
