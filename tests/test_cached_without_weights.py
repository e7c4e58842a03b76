"""A fit, test and robustness run from the feature cache never read the frozen weights: the
encoders' architecture comes from their configs, their identity from the config and the cache
manifest. Shown with the paper's model config on tiny encoders whose weight files are deleted once
the cache is built."""

import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from rlrt.cache.reader import SplitCacheReader
from rlrt.commands.cache import run_cache
from rlrt.commands.robustness import run_robustness
from rlrt.engine.lightning_cli import RLRTCLI
from tests.test_cli import demo_args


def paper_args(root: Path, vit_checkpoint: Path, llama: Path, cache: Path) -> list[str]:
    """`configs/model/rlrt.yaml` (ViT-L-14 + LLaMA-2-7B, bf16) with its weights swapped for tiny
    local ones: the image tower's architecture from a model config, its weights from a file."""
    encoders = [
        "--model.image_encoder.init_args.model_name=rlrt-tiny-vit",
        f"--model.image_encoder.init_args.pretrained={vit_checkpoint}",
        "--model.image_encoder.init_args.image_size=32",
        "--model.image_encoder.init_args.layers=2",
        f"--model.text_encoder.init_args.model_name_or_path={llama}",
        "--model.text_encoder.init_args.layers=2",
        "--model.common_dim=8",
    ]
    args = demo_args(root, None, llama, model="rlrt.yaml", encoders=encoders)
    return [*args, f"--data.init_args.feature_cache={cache}", "--trainer.max_epochs=1"]


@pytest.fixture()
def weights(tmp_path, tiny_vit_config, tiny_llama_dir):
    """A tiny open_clip checkpoint file and a copy of the tiny LLaMA folder, both deletable."""
    open_clip.add_model_config(tiny_vit_config)
    torch.manual_seed(3)
    vit = tmp_path / "tiny_vit.pt"
    torch.save(open_clip.create_model("rlrt-tiny-vit").state_dict(), vit)
    llama = tmp_path / "llama"
    shutil.copytree(tiny_llama_dir, llama)
    return vit, llama


def weight_files(llama: Path) -> list[Path]:
    return [p for p in llama.iterdir() if p.suffix in (".safetensors", ".bin")]


def test_cached_fit_and_test_run_with_the_weight_files_deleted(tmp_path, weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vit, llama = weights
    args = paper_args(tmp_path, vit, llama, tmp_path / "cache")
    run_cache(args)
    built = SplitCacheReader(tmp_path / "cache" / "train").manifest["encoders"]
    assert built["image"]["pretrained"] == "tiny_vit.pt" and built["text"]["dtype"] == "bfloat16"
    assert weight_files(llama)
    for path in [vit, *weight_files(llama)]:
        path.unlink()

    fit = RLRTCLI(args=["fit", *args])
    assert not fit.model.image_encoder.is_loaded and not fit.model.text_encoder.is_loaded
    checkpoint = Path(fit.trainer.checkpoint_callback.last_model_path)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["rlrt_encoders"] == built  # the weights that made the features trained on
    assert not any(
        key.startswith(("image_encoder.", "text_encoder.")) for key in saved["state_dict"]
    )

    test = RLRTCLI(args=["test", *args, "--ckpt_path", str(checkpoint)])
    metrics = test.trainer.callback_metrics
    assert 0.0 <= float(metrics["test/f1_macro"]) <= 1.0
    assert not test.model.text_encoder.is_loaded

    # the missing-modality grid from the cache (the noise grid needs the raw inputs: online)
    output = tmp_path / "robustness"
    robust = ["--ckpt_path", str(checkpoint), "--output", str(output), "--rates", "0,1"]
    grid = run_robustness([*robust, "--types", "image,text", "--noise_levels", ""])
    assert set(grid["features"]) == {"cache"}
    scores = grid[grid["metric"] == "f1_macro"]["value"]
    assert len(scores) == 4 and scores.between(0.0, 1.0).all()


def test_online_encoding_without_the_weight_files_is_one_line(tmp_path, weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vit, llama = weights
    args = paper_args(tmp_path, vit, llama, tmp_path / "cache")
    online = [a for a in args if not a.startswith("--data.init_args.feature_cache")]
    for path in weight_files(llama):
        path.unlink()
    with pytest.raises(FileNotFoundError, match=f"cannot load text model '{llama}'"):
        RLRTCLI(args=["fit", *online])
    assert not (tmp_path / "results" / "demo" / "runs" / "rlrt" / "version_0").exists()
