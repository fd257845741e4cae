"""Optimizers and clipping against PyTorch's on random gradients (float64)."""

import math

import numpy as np
import pytest

from fastrnn import optim
from fastrnn.module import Parameter

torch = pytest.importorskip("torch")

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ours = [Parameter(v.copy()) for v in values]
    theirs = [torch.nn.Parameter(torch.tensor(v)) for v in values]
    return ours, theirs, rng


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{k}" for k, (n, _) in enumerate(CASES)])
def test_optimizer_matches_pytorch(name, kw):
    ours, theirs, rng = _pair()
    o = getattr(optim, name)(ours, **kw)
    t = getattr(torch.optim, name)(theirs, **kw)
    for _ in range(6):
        for p, q in zip(ours, theirs):
            g = rng.standard_normal(p.shape)
            p.grad, q.grad = g, torch.tensor(g)
        o.step()
        t.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", CASES, ids=[f"{n}-{k}" for k, (n, _) in enumerate(CASES)])
def test_late_and_occasional_gradients_match_pytorch(name, kw):
    """Per-parameter state as in torch: the first parameter gets gradients from step 0, the
    second only from step 3 on, and then only every other step (its Adam step count, and its
    SGD momentum buffer, start with its first real gradient)."""
    ours, theirs, rng = _pair(2)
    o = getattr(optim, name)(ours, lr=0.1, **{k: v for k, v in kw.items() if k != "lr"})
    t = getattr(torch.optim, name)(theirs, lr=0.1, **{k: v for k, v in kw.items() if k != "lr"})
    for step in range(8):
        for k, (p, q) in enumerate(zip(ours, theirs)):
            if k == 1 and (step < 3 or step % 2):
                p.grad, q.grad = None, None
                continue
            g = rng.standard_normal(p.shape)
            p.grad, q.grad = g, torch.tensor(g)
        o.step()
        t.step()
        for p, q in zip(ours, theirs):
            np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-12, atol=1e-14)
    if name != "SGD":
        assert [st["step"] for st in o.state] == [int(t.state[q]["step"]) for q in theirs]


def test_optimizer_checkpoint_keeps_per_parameter_counts():
    ours, _, rng = _pair(3)
    o = optim.Adam(ours, lr=0.1)
    ours[0].grad = rng.standard_normal((3, 4))
    o.step()
    ours[1].grad = rng.standard_normal(5)
    o.step()
    other = optim.Adam([Parameter(p.data.copy()) for p in ours], lr=0.1)
    other.load_state_dict(o.state_dict())
    assert [st["step"] for st in other.state] == [2, 1] and other.steps == 2
    with pytest.raises(ValueError, match="'0.step': expected a number"):
        other.load_state_dict({**o.state_dict(), "0.step": np.ones(2)})


def test_parameters_without_gradient_are_skipped():
    ours, _, _ = _pair()
    before = ours[1].data.copy()
    ours[0].grad = np.ones((3, 4))
    optim.Adam(ours, lr=0.1).step()
    np.testing.assert_array_equal(ours[1].data, before)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_pytorch(norm_type, max_norm):
    ours, theirs, rng = _pair(1)
    for p, q in zip(ours, theirs):
        g = rng.standard_normal(p.shape)
        p.grad, q.grad = g, torch.tensor(g)
    total = optim.clip_grad_norm_(ours, max_norm, norm_type)
    ref = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert abs(total - ref.item()) <= 1e-12 * ref.item()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_can_refuse_non_finite():
    ours, _, _ = _pair()
    ours[0].grad = np.full((3, 4), np.nan)
    ours[1].grad = np.ones(5)
    with pytest.raises(RuntimeError, match="NaN or infinity"):
        optim.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert math.isnan(optim.clip_grad_norm_(ours, 1.0))


def test_clip_grad_value_matches_pytorch():
    ours, theirs, rng = _pair(2)
    for p, q in zip(ours, theirs):
        g = 3 * rng.standard_normal(p.shape)
        p.grad, q.grad = g, torch.tensor(g)
    optim.clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for p, q in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, q.grad.numpy())


def test_bad_arguments():
    ours, _, _ = _pair()
    with pytest.raises(ValueError, match="lr: expected a number >= 0"):
        optim.SGD(ours, lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(ours, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(ours, betas=(0.9, 1.5))
    with pytest.raises(TypeError, match=r"params\[0\]: expected a fastrnn Parameter"):
        optim.SGD([np.ones(3)], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
