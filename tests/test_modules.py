"""MoLT, FBP and fusion: shapes, masks, and the maths against explicit references."""

import math

import numpy as np
import pytest
import torch

from rlrt.modules import (
    FactorizedBilinearPooling,
    FusionHead,
    LayerAggregation,
    ModalityLatentTranslation,
    factorized_bilinear_pooling,
)
from rlrt.modules.molt import masked_softmax_attention


def test_attention_matches_a_per_query_loop_and_ignores_padding():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = masked_softmax_attention(q, k, v, mask)
    for b in range(2):
        keys = [j for j in range(5) if mask[b, j]]
        for i in range(3):
            scores = torch.tensor([float(q[b, 0, i] @ k[b, 0, j]) / math.sqrt(4) for j in keys])
            weights = scores.softmax(0)
            expected = sum(w * v[b, 0, j] for w, j in zip(weights, keys))
            torch.testing.assert_close(out[b, 0, i], expected)


def test_attention_with_no_real_key_is_zero_with_finite_gradient():
    q = torch.randn(1, 1, 2, 4, requires_grad=True)
    k = torch.randn(1, 1, 3, 4)
    out = masked_softmax_attention(q, k, k, torch.zeros(1, 3, dtype=torch.bool))
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isfinite(q.grad).all()


def test_molt_shapes_and_padding_invariance():
    torch.manual_seed(0)
    molt = ModalityLatentTranslation(image_dim=12, text_dim=10, common_dim=8, num_heads=2).eval()
    image = torch.randn(3, 5, 12)
    image_mask = torch.ones(3, 5, dtype=torch.bool)
    text = torch.randn(3, 4, 10)
    text_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    h_i, h_t = molt(image, image_mask, text, text_mask)
    assert h_i.shape == (3, 8) and h_t.shape == (3, 8)
    # garbage in padded positions (and extra padded tokens) must not change anything
    noisy = torch.cat([text.masked_fill(~text_mask[..., None], 1e4), torch.randn(3, 2, 10)], dim=1)
    noisy_mask = torch.cat([text_mask, torch.zeros(3, 2, dtype=torch.bool)], dim=1)
    h_i2, h_t2 = molt(image, image_mask, noisy, noisy_mask)
    torch.testing.assert_close(h_i, h_i2)
    torch.testing.assert_close(h_t, h_t2)


def test_molt_without_cross_attention_is_projection_then_layernorm_mean():
    molt = ModalityLatentTranslation(image_dim=6, text_dim=6, common_dim=4, cross_attention=False)
    image, text = torch.randn(2, 3, 6), torch.randn(2, 3, 6)
    mask = torch.ones(2, 3, dtype=torch.bool)
    h_i, _ = molt(image, mask, text, mask)
    expected = molt.image_norm(molt.image_proj(image)).mean(dim=1)
    torch.testing.assert_close(h_i, expected)


def test_fbp_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3, 12)), rng.normal(size=(3, 12))
    pooled = (x * y).reshape(3, 3, 4).sum(axis=2)
    expected = np.sign(pooled) * np.sqrt(np.abs(pooled))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = factorized_bilinear_pooling(torch.tensor(x), torch.tensor(y), window=4)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got.numpy(), axis=1), 1.0, rtol=1e-6)


def test_fbp_gradient_finite_at_zero_and_window_must_divide():
    x = torch.zeros(2, 8, requires_grad=True)
    factorized_bilinear_pooling(x, torch.zeros(2, 8), window=4).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="does not divide"):
        factorized_bilinear_pooling(torch.ones(1, 6), torch.ones(1, 6), window=4)
    concat = FactorizedBilinearPooling(window=4, bilinear=False)
    assert concat(torch.ones(2, 8), torch.ones(2, 8)).shape == (2, concat.output_dim(8))


def test_layer_aggregation_is_mean_over_queries_of_mixtures():
    agg = LayerAggregation(num_layers=3, num_queries=2)
    with torch.no_grad():
        agg.mixing.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
    z = torch.randn(3, 4, 5)
    expected = ((z[0] + 2 * z[2]) + z[1]) / 2
    torch.testing.assert_close(agg(z), expected)


def test_fusion_head_shapes_and_inputs():
    head = FusionHead(
        num_layers=2,
        representation_dim=4,
        image_embed_dim=6,
        text_embed_dim=5,
        num_classes=3,
        fusion_dim=8,
        hidden_dim=16,
    )
    logits = head(torch.randn(2, 7, 4), torch.randn(7, 6), torch.randn(7, 5))
    assert logits.shape == (7, 3)
    late = FusionHead(
        num_layers=2,
        representation_dim=4,
        image_embed_dim=6,
        text_embed_dim=5,
        num_classes=3,
        use_robust=False,
    )
    assert late.robust_proj is None
    with pytest.raises(ValueError):
        FusionHead(
            num_layers=1,
            representation_dim=1,
            image_embed_dim=1,
            text_embed_dim=1,
            num_classes=2,
            use_robust=False,
            use_image_embedding=False,
            use_text_embedding=False,
        )
