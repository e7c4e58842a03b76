"""`L_CCA` and the whole training step stay finite on degenerate batches (property-based).

Degenerate: batches of 1 and 2, batches no larger than `d_c`, constant features, very large
values, float16 inputs, every sample of a modality missing. Checked: the loss and the gradient of
every trainable parameter are finite.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rlrt.features import Features
from rlrt.losses import cca_loss
from rlrt.system import RLRT

COMMON_DIM = 8
SCALES = [1e-6, 1.0, 1e3, 1e6, 1e12, 1e30]
FLOAT16_MAX_SCALE = 1e4  # float16 tops out at 65504


# tiny models: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def two_views(draw):
    """`(x, y)`, each `(B, d)`: any batch size up to `d + 2`, scaled, possibly constant in some
    columns or entirely, in float32 or float16."""
    dim = draw(st.integers(1, 8))
    batch = draw(st.integers(1, dim + 2))
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    scale = draw(st.sampled_from(SCALES))
    if dtype == np.float16:
        scale = min(scale, FLOAT16_MAX_SCALE)
    unit = st.floats(-1.0, 1.0, width=32)
    views = []
    for _ in range(2):
        values = draw(arrays(np.float64, (batch, dim), elements=unit)) * scale
        constant = draw(st.lists(st.booleans(), min_size=dim, max_size=dim))
        values[:, constant] = values[:1, constant]  # columns equal to their first entry
        views.append(torch.from_numpy(values.astype(dtype)))
    return views


@settings(max_examples=300, deadline=None, derandomize=True)
@given(two_views())
def test_cca_loss_and_its_gradient_are_finite(views):
    x, y = (v.float().requires_grad_(True) for v in views)
    loss = cca_loss(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    # one minus a mean of correlations, each in [0, 1]
    assert -1e-9 <= loss.item() <= 1.0 + 1e-9
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


@pytest.fixture(scope="module")
def model(image_encoder, text_encoder):
    model = RLRT(
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        num_classes=3,
        common_dim=COMMON_DIM,
        fbp_window=2,
        fusion_dim=8,
        hidden_dim=16,
    )
    model.log = lambda *args, **kwargs: None  # no trainer attached
    model.log_dict = lambda *args, **kwargs: None
    return model.train()


def random_features(model, batch, scale, dtype, constant, generator) -> Features:
    """Features shaped like the tiny encoders' (`(L_s, B, N, D)` tokens, `(B, E)` embeddings)."""
    layers = len(model.image_encoder.layer_indices)
    image_width, text_width = model.image_encoder.width, model.text_encoder.width

    def draw(*shape):
        if constant:
            return torch.full(shape, scale).to(dtype)
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    return Features(
        image_tokens=draw(layers, batch, 5, image_width),
        image_mask=torch.ones(batch, 5, dtype=torch.bool),
        image_embedding=draw(batch, model.image_encoder.embed_dim),
        text_tokens=draw(layers, batch, 4, text_width),
        text_mask=torch.ones(batch, 4, dtype=torch.bool),
        text_embedding=draw(batch, model.text_encoder.embed_dim),
    )


def presence(kind: str, batch: int, generator) -> torch.Tensor:
    if kind == "all present":
        return torch.ones(batch, dtype=torch.bool)
    if kind == "all missing":
        return torch.zeros(batch, dtype=torch.bool)
    return torch.rand(batch, generator=generator) < 0.5


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    batch=st.integers(1, COMMON_DIM + 2),
    scale=st.sampled_from([1e-6, 1.0, 1e4, 1e8, 1e15]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    constant=st.booleans(),
    image=st.sampled_from(["all present", "all missing", "some missing"]),
    text=st.sampled_from(["all present", "all missing", "some missing"]),
    strategy=st.sampled_from(["dummy", "zero"]),
    seed=st.integers(0, 2**16),
)
def test_training_step_loss_and_gradients_are_finite(
    model, batch, scale, dtype, constant, image, text, strategy, seed
):
    if dtype == torch.float16:
        scale = min(scale, FLOAT16_MAX_SCALE)
    generator = torch.Generator().manual_seed(seed)
    batch_dict = {
        "features": random_features(model, batch, scale, dtype, constant, generator),
        "dummy_features": random_features(model, 1, 1.0, dtype, True, generator),
        "label": torch.randint(0, 3, (batch,), generator=generator),
        "id": [f"s{i}" for i in range(batch)],
        "image_present": presence(image, batch, generator),
        "text_present": presence(text, batch, generator),
    }
    model.zero_grad(set_to_none=True)
    previous = model.use_missing_strategy(strategy)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout
            loss = model._shared_step(batch_dict, "train")
    finally:
        model.use_missing_strategy(previous)
    loss.backward()
    assert torch.isfinite(loss)
    trainable = dict(model.named_parameters())
    trainable = {n: p for n, p in trainable.items() if p.requires_grad}
    assert any(p.grad is not None for p in trainable.values())
    not_finite = [
        n for n, p in trainable.items() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not not_finite, not_finite
