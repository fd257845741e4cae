"""fastrnn.torch under torch.func: vmap, jacrev, grad through functional_call, per-sample
gradients and gradcheck's batched gradients, against torch.nn in float64 (torch.nn's own
RNN modules have no batching rule, so vmap is checked against a loop of calls)."""

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402  (after the skip: it imports torch)
from fastrnn.torch import _ops  # noqa: E402
from torch.func import functional_call, grad, jacrev, vmap  # noqa: E402

MODULES = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]
N, T, B, I, H = 3, 4, 2, 3, 5


def _pair(name, **kw):
    torch.manual_seed(0)
    ours = getattr(ft, name)(I, H, **kw).double()
    ref = getattr(torch.nn, name)(I, H, **kw).double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _samples(name):
    """``N`` inputs: cells ``[N,B,I]``, layers ``[N,T,B,I]``."""
    g = torch.Generator().manual_seed(1)
    shape = (N, B, I) if name.endswith("Cell") else (N, T, B, I)
    return torch.randn(shape, dtype=torch.float64, generator=g)


def _out(module, x, params=None):
    y = module(x) if params is None else functional_call(module, params, (x,))
    return y[0] if isinstance(y, tuple) else y


def _close(a, b, what):
    assert a.shape == b.shape, what
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), \
        f"{what}: max difference {(a - b).abs().max().item()}"


@pytest.mark.parametrize("name", MODULES)
def test_vmap_forward_equals_a_loop_of_calls(name):
    ours, ref = _pair(name)
    x = _samples(name)
    _close(vmap(lambda xi: _out(ours, xi))(x), torch.stack([_out(ref, xi) for xi in x]),
           "vmap output")
    with torch.no_grad():  # (nothing saved for backward)
        _close(vmap(lambda xi: _out(ours, xi))(x), torch.stack([_out(ref, xi) for xi in x]),
               "vmap output without gradients")


@pytest.mark.parametrize("name", MODULES)
def test_jacrev_of_the_input_equals_torch_nn(name):
    ours, ref = _pair(name)
    x = _samples(name)[0]
    want = torch.autograd.functional.jacobian(lambda v: _out(ref, v), x)
    _close(jacrev(lambda v: _out(ours, v))(x), want, "jacobian")


@pytest.mark.parametrize("name", MODULES)
def test_grad_of_parameters_through_functional_call_equals_autograd(name):
    """Parameters swapped in by functional_call are the ones computed with (the layers'
    cached weight list is refreshed, as torch's forward does)."""
    ours, ref = _pair(name)
    x = _samples(name)[0]
    params = {k: v.detach() * 1.5 for k, v in ref.named_parameters()}
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss_ref = _out(ref, x, leaves).pow(2).sum()
    want = dict(zip(leaves, torch.autograd.grad(loss_ref, list(leaves.values()))))
    got = grad(lambda p: _out(ours, x, p).pow(2).sum())(params)
    for k in want:
        _close(got[k], want[k], f"gradient of {k}")


@pytest.mark.parametrize("name", MODULES)
def test_per_sample_gradients_equal_one_backward_per_sample(name):
    ours, ref = _pair(name)
    x = _samples(name)
    params = {k: v.detach() for k, v in ref.named_parameters()}
    before = len(_ops._contexts)
    got = vmap(grad(lambda p, xi: _out(ours, xi, p).pow(2).sum()), in_dims=(None, 0))(
        params, x)
    assert len(_ops._contexts) == before  # every sample's saved state freed
    for k, p in ref.named_parameters():
        want = torch.stack([torch.autograd.grad(_out(ref, xi).pow(2).sum(), [p])[0]
                            for xi in x])
        _close(got[k], want, f"per-sample gradient of {k}")


@pytest.mark.parametrize("name", ["LSTM", "GRUCell"])
def test_gradcheck_with_batched_gradients(name):
    """gradcheck's batched check runs vmap over backward."""
    ours, _ = _pair(name)
    x = _samples(name)[0].requires_grad_()
    assert torch.autograd.gradcheck(lambda v: _out(ours, v), (x,), check_batched_grad=True)


def test_a_gradient_of_a_gradient_is_still_refused_under_torch_func():
    ours, _ = _pair("LSTM")
    x = _samples("LSTM")[0]
    with pytest.raises(RuntimeError, match="double backward"):
        grad(lambda v: grad(lambda u: _out(ours, u).pow(2).sum())(v).sum())(x)
