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
    QueryAttentionPooling,
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


MODES = ["attention", "layer_weights"]
# The fusion head's state_dict before the `mode` switch (L_s=2, R=4, E_i=6, E_t=5, D=8, C=3).
OLD_FUSION_STATE = {
    "aggregate.mixing": (4, 2),
    "robust_proj.0.weight": (8, 4),
    "robust_proj.0.bias": (8,),
    "robust_proj.1.weight": (8,),
    "robust_proj.1.bias": (8,),
    "image_proj.0.weight": (8, 6),
    "image_proj.0.bias": (8,),
    "image_proj.1.weight": (8,),
    "image_proj.1.bias": (8,),
    "text_proj.0.weight": (8, 5),
    "text_proj.0.bias": (8,),
    "text_proj.1.weight": (8,),
    "text_proj.1.bias": (8,),
    "classifier.0.weight": (16, 24),
    "classifier.0.bias": (16,),
    "classifier.3.weight": (3, 16),
    "classifier.3.bias": (3,),
}


def small_head(**kwargs) -> FusionHead:
    """L_s=2, R=4, E_i=6, E_t=5, C=3, D=8, hidden 16, Q=4 unless overridden; eval (no dropout)."""
    args = dict(
        num_layers=2,
        representation_dim=4,
        image_embed_dim=6,
        text_embed_dim=5,
        num_classes=3,
        fusion_dim=8,
        hidden_dim=16,
    )
    return FusionHead(**{**args, **kwargs}).eval()


def small_inputs(batch: int = 7, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, batch, 4, generator=g, dtype=dtype),
        torch.randn(batch, 6, generator=g, dtype=dtype),
        torch.randn(batch, 5, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("mode", MODES)
def test_fusion_head_shapes_and_inputs(mode):
    assert small_head(mode=mode)(*small_inputs()).shape == (7, 3)
    late = small_head(mode=mode, use_robust=False)
    assert late.robust_proj is None and late.aggregate is None and late.layer_embedding is None
    assert late(None, *small_inputs()[1:]).shape == (7, 3)
    with pytest.raises(ValueError, match="at least one input"):
        small_head(mode=mode, use_robust=False, use_image_embedding=False, use_text_embedding=False)


def test_fusion_head_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown fusion mode"):
        small_head(mode="mean")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _linear(w, b, x):  # explicit loops: out_i = sum_j w_ij x_j + b_i
    return np.array([sum(w[i, j] * x[j] for j in range(len(x))) + b[i] for i in range(len(w))])


def _layer_norm(x, gamma, beta, eps=1e-5):
    mean = sum(x) / len(x)
    var = sum((v - mean) ** 2 for v in x) / len(x)
    return np.array([(v - mean) / math.sqrt(var + eps) * g + b for v, g, b in zip(x, gamma, beta)])


def _reference_attention_logits(head: FusionHead, z, e_i, e_t) -> np.ndarray:
    """The attention head by hand, sample by sample and query by query, from its own weights."""

    def project(seq, x):
        return _layer_norm(
            _linear(_np(seq[0].weight), _np(seq[0].bias), x), _np(seq[1].weight), _np(seq[1].bias)
        )

    queries = _np(head.attention.queries)
    w_k = _np(head.attention.key.weight)
    w_v, b_v = _np(head.attention.value.weight), _np(head.attention.value.bias)
    dim = queries.shape[1]
    out = []
    for b in range(e_i.shape[0]):
        tokens = [
            project(head.robust_proj, _np(z[layer, b])) + _np(head.layer_embedding[layer])
            for layer in range(z.shape[0])
        ]
        tokens += [project(head.image_proj, _np(e_i[b])), project(head.text_proj, _np(e_t[b]))]
        keys = [_linear(w_k, np.zeros(dim), t) for t in tokens]
        values = [_linear(w_v, b_v, t) for t in tokens]
        attended = np.zeros(dim)
        for q in queries:
            scores = [sum(q[d] * k[d] for d in range(dim)) / math.sqrt(dim) for k in keys]
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            weights = [x / sum(exps) for x in exps]
            attended += sum(w * v for w, v in zip(weights, values)) / len(queries)
        features = np.concatenate([attended, sum(tokens) / len(tokens)])
        c0, c3 = head.classifier[0], head.classifier[3]
        hidden = _linear(_np(c0.weight), _np(c0.bias), features)
        hidden = np.array([0.5 * h * (1 + math.erf(h / math.sqrt(2))) for h in hidden])  # GELU
        out.append(_linear(_np(c3.weight), _np(c3.bias), hidden))
    return np.stack(out)


def test_attention_fusion_matches_an_explicit_loop_reference():
    torch.manual_seed(0)
    head = small_head(num_queries=3)
    with torch.no_grad():  # non-trivial LayerNorm affine and layer embedding
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z, e_i, e_t = small_inputs(batch=2)
    expected = _reference_attention_logits(head, z, e_i, e_t)
    np.testing.assert_allclose(head(z, e_i, e_t).detach().numpy(), expected, atol=1e-5)


def test_query_attention_pooling_weights_are_a_softmax_over_tokens():
    torch.manual_seed(0)
    pool = QueryAttentionPooling(dim=8, num_queries=3)
    tokens = torch.randn(2, 5, 8)
    weights = pool.attention_weights(tokens)
    assert weights.shape == (2, 3, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    assert pool(tokens).shape == (2, 8)


def _attention_logits_with_queries(head: FusionHead, queries: torch.Tensor, inputs):
    with torch.no_grad():
        head.attention.queries = torch.nn.Parameter(queries.clone())
        return head(*inputs)


def test_attention_queries_do_not_collapse_to_one():
    torch.manual_seed(0)
    head = small_head(num_queries=2).double()
    inputs = small_inputs(dtype=torch.float64)
    a, b = 3 * torch.randn(8, dtype=torch.float64), 3 * torch.randn(8, dtype=torch.float64)
    both = _attention_logits_with_queries(head, torch.stack([a, b]), inputs)
    for single in (a, b, (a + b) / 2):  # Q=2 copies of one query, i.e. effectively one query
        one = _attention_logits_with_queries(head, torch.stack([single, single]), inputs)
        assert (both - one).abs().max() > 1e-3
    # and a copy of one query adds nothing: Q counts through distinct queries only
    one = _attention_logits_with_queries(head, a[None], inputs)
    torch.testing.assert_close(
        one, _attention_logits_with_queries(head, torch.stack([a, a]), inputs)
    )


def test_layer_weights_rows_collapse_to_their_mean():
    # why `layer_weights` is only an ablation: M's Q rows act as the single row mean_q M_q
    torch.manual_seed(0)
    two = small_head(mode="layer_weights", num_queries=2)
    one = small_head(mode="layer_weights", num_queries=1)
    with torch.no_grad():
        two.aggregate.mixing.copy_(torch.tensor([[2.0, -1.0], [0.0, 3.0]]))
    state = {k: v for k, v in two.state_dict().items() if k != "aggregate.mixing"}
    state["aggregate.mixing"] = two.aggregate.mixing.mean(0, keepdim=True)
    one.load_state_dict(state)
    inputs = small_inputs()
    torch.testing.assert_close(two(*inputs), one(*inputs))


def test_layer_weights_mode_is_the_old_head():
    head = small_head(mode="layer_weights")
    state = head.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == OLD_FUSION_STATE
    # an old checkpoint (same keys and shapes) loads strictly; the forward is the old formula
    old = {k: torch.randn(shape) for k, shape in OLD_FUSION_STATE.items()}
    head.load_state_dict(old, strict=True)
    z, e_i, e_t = small_inputs()
    mixed = torch.einsum("ql,lbr->br", old["aggregate.mixing"], z) / 4
    features = torch.cat(
        [head.robust_proj(mixed), head.image_proj(e_i), head.text_proj(e_t)], dim=-1
    )
    torch.testing.assert_close(head(z, e_i, e_t), head.classifier(features))


def test_attention_mode_state_adds_only_the_attention_parameters():
    keys = {k: tuple(v.shape) for k, v in small_head().state_dict().items()}
    expected = {k: v for k, v in OLD_FUSION_STATE.items() if k != "aggregate.mixing"}
    expected |= {
        "classifier.0.weight": (16, 16),  # [pooled, token mean]
        "layer_embedding": (2, 8),
        "attention.queries": (4, 8),
        "attention.key.weight": (8, 8),
        "attention.value.weight": (8, 8),
        "attention.value.bias": (8,),
    }
    assert keys == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("switch", ["use_robust", "use_image_embedding", "use_text_embedding"])
def test_fusion_switches_select_the_inputs(mode, switch):
    torch.manual_seed(0)
    index = {"use_robust": 0, "use_image_embedding": 1, "use_text_embedding": 2}[switch]
    inputs = list(small_inputs(seed=0))
    other = list(inputs)
    other[index] = small_inputs(seed=1)[index]  # that one input changed
    on, off = small_head(mode=mode), small_head(mode=mode, **{switch: False})
    assert (on(*inputs) - on(*other)).abs().max() > 1e-4
    if switch == "use_robust":
        inputs[0] = other[0] = None
    torch.testing.assert_close(off(*inputs), off(*other))
    if mode == "attention":  # tokens: 2 layers + image + text, less what the switch removes
        assert off.tokens(*inputs).shape == (7, 2 if switch == "use_robust" else 3, 8)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_robust", [True, False])
def test_fusion_gradients_reach_every_parameter(mode, use_robust):
    torch.manual_seed(0)
    head = small_head(mode=mode, use_robust=use_robust).train()
    z, e_i, e_t = small_inputs()
    logits = head(z if use_robust else None, e_i, e_t)
    (logits * torch.randn_like(logits)).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if mode == "attention":
        assert head.attention.queries.grad.abs().min(dim=1).values.gt(0).all()


@pytest.mark.parametrize("mode", MODES)
def test_fusion_batch_of_one_and_zero_representations_are_finite(mode):
    torch.manual_seed(0)
    head = small_head(mode=mode).train()
    z, e_i, e_t = small_inputs(batch=1)
    z = torch.zeros_like(z, requires_grad=True)
    logits = head(z, e_i, e_t)
    logits.sum().backward()
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()
    assert torch.isfinite(z.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    with torch.no_grad():  # every input zero, and every projection's bias zero too (LN of 0)
        for proj in (head.robust_proj, head.image_proj, head.text_proj):
            proj[0].bias.zero_()
        zeros = head.eval()(torch.zeros(2, 1, 4), torch.zeros(1, 6), torch.zeros(1, 5))
    assert torch.isfinite(zeros).all()
