"""Weights fingerprints: what tells two encoders' weights apart in checkpoints and caches."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder
from rlrt.engine.fingerprint import file_fingerprint, folder_fingerprint


def test_a_small_file_is_hashed_whole(tmp_path):
    path = tmp_path / "w.bin"
    content = bytes(range(256)) * 40
    path.write_bytes(content)
    expected = hashlib.sha256(str(len(content)).encode() + content).hexdigest()
    assert file_fingerprint(path, sample_bytes=4096) == f"sha256:{expected}"


def test_a_large_file_is_sampled_at_start_middle_and_end(tmp_path):
    sample = 1000
    content = bytearray(b"\x01" * 10 * sample)
    path = tmp_path / "w.bin"
    path.write_bytes(bytes(content))
    size = len(content)
    samples = [content[o : o + sample] for o in (0, (size - sample) // 2, size - sample)]
    expected = hashlib.sha256(str(size).encode() + b"".join(samples)).hexdigest()
    reference = file_fingerprint(path, sample)
    assert reference == f"sha256:{expected}"
    for offset, seen in ((0, True), (size // 2, True), (size - 1, True), (2 * sample, False)):
        changed = bytearray(content)
        changed[offset] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert (file_fingerprint(path, sample) != reference) is seen, offset


def test_a_folder_fingerprint_follows_content_and_names_not_location(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"abc")
    reference = folder_fingerprint(folder)
    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(folder, copy)
    (copy / ".cache").mkdir()
    (copy / ".cache" / "lock").write_text("x")
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "m.pyc").write_bytes(b"x")
    assert folder_fingerprint(copy) == reference  # moved, plus hidden files and bytecode
    (copy / "sub" / "weights.bin").write_bytes(b"abd")
    assert folder_fingerprint(copy) != reference
    (copy / "sub" / "weights.bin").write_bytes(b"abc")
    (copy / "sub" / "weights.bin").rename(copy / "sub" / "other.bin")
    assert folder_fingerprint(copy) != reference


def test_random_image_weights_of_other_seeds_have_other_identities(tiny_vit_config):
    def identity(seed):
        return FrozenImageEncoder(
            config_file=str(tiny_vit_config), image_size=32, layers=2, init_seed=seed
        ).identity()

    assert identity(0) == identity(0)
    assert identity(0)["init_seed"] == 0 and identity(1)["init_seed"] == 1
    assert identity(0)["weights_fingerprint"] == file_fingerprint(tiny_vit_config)


def test_a_text_model_folder_is_identified_by_its_content(tmp_path, tiny_llama_dir):
    def identity(folder):
        return FrozenTextEncoder(model_name_or_path=str(folder), layers=2).identity()

    moved = tmp_path / "moved"
    shutil.copytree(tiny_llama_dir, moved)
    assert identity(moved)["weights_fingerprint"] == identity(tiny_llama_dir)["weights_fingerprint"]
    weights = next(p for p in moved.iterdir() if p.suffix in (".safetensors", ".bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight: another fine-tune, as far as we can tell
    weights.write_bytes(bytes(data))
    assert identity(moved)["weights_fingerprint"] != identity(tiny_llama_dir)["weights_fingerprint"]
    assert identity(moved)["dtype"] == "float32"


def test_a_hub_model_is_identified_by_the_cached_snapshot_it_loads(tmp_path, tiny_llama_dir):
    """A fake hub cache (the standard layout) read offline in a fresh process, since the hub
    cache folder is fixed when huggingface_hub is imported."""
    repo = tmp_path / "hub" / "models--rlrt--tiny-llama"
    for commit in ("a" * 40, "b" * 40):
        shutil.copytree(tiny_llama_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    code = (
        "from rlrt.encoders import FrozenTextEncoder;"
        "e = FrozenTextEncoder(model_name_or_path='rlrt/tiny-llama', layers=2);"
        "print('IDENTITY', e.identity()['weights_fingerprint'])"
    )
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }

    def loaded_identity(main_commit):
        (repo / "refs" / "main").write_text(main_commit)
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return next(x for x in done.stdout.splitlines() if x.startswith("IDENTITY")).split()[1]

    assert loaded_identity("a" * 40) == f"hub-commit:{'a' * 40}"
    assert loaded_identity("b" * 40) == f"hub-commit:{'b' * 40}"  # main moved: another model
