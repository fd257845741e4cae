"""The variants as layers: ``LSTM(peepholes=True)``, ``LSTM(proj_size=P)`` and
``GRU(reset_after=False)`` - parameters, gradients reaching every parameter (finite
differences through the layer), cells, state_dict, repr and errors. (Kernels: test_backends,
test_gradcheck; PyTorch's projection: test_torch_parity; independent implementations:
test_onnx.)"""

import numpy as np
import pytest

import fastrnn
from conftest import numpy_backends

VARIANTS = {
    "peepholes": lambda **kw: fastrnn.LSTM(4, 3, peepholes=True, **kw),
    "reset_before": lambda **kw: fastrnn.GRU(4, 3, reset_after=False, **kw),
    "peepholes-proj": lambda **kw: fastrnn.LSTM(4, 3, peepholes=True, proj_size=2, **kw),
}


def _loss(layer, x, lengths, R):
    out = layer(x, lengths=lengths)[0]
    return float((out * R).sum()), out


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_parameter_gets_its_gradient(variant, bias, backend):
    """Each parameter's ``.grad`` against central differences of the layer's loss
    (float64): the gradients reach the right parameters, with and without biases."""
    layer = VARIANTS[variant](num_layers=2, bidirectional=True, bias=bias, dtype=np.float64,
                              seed=3, backend=backend)
    rng = np.random.default_rng(3)
    for _, p in layer.named_parameters():  # random values of a size that matters
        p.data[...] = rng.uniform(-0.6, 0.6, p.data.shape)
    x = rng.standard_normal((5, 3, 4))
    lengths = [5, 2, 4]
    R = rng.standard_normal((5, 3, 2 * layer.state_size))
    _, out = _loss(layer, x, lengths, R)
    layer.backward(R)
    names = [n for n, _ in layer.named_parameters()]
    assert ("peephole_l1_reverse" in names) == variant.startswith("peepholes")
    assert ("weight_hr_l1_reverse" in names) == variant.endswith("proj")
    assert ("bias_ih_l0" in names) == bias
    eps = 1e-6
    for name, p in layer.named_parameters():
        v = rng.standard_normal(p.data.shape)
        base = p.data.copy()
        p.data[...] = base + eps * v
        plus = _loss(layer, x, lengths, R)[0]
        p.data[...] = base - eps * v
        minus = _loss(layer, x, lengths, R)[0]
        p.data[...] = base
        numeric = (plus - minus) / (2 * eps)
        exact = float((p.grad * v).sum())
        assert abs(numeric - exact) <= 1e-7 * max(1.0, abs(exact)), (name, numeric, exact)


def test_peepholes_are_parameters_after_the_biases_and_load_from_a_state_dict():
    layer = fastrnn.LSTM(4, 3, num_layers=2, bidirectional=True, peepholes=True, seed=1)
    names = [n for n, _ in layer.named_parameters()]
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "peephole_l0"]
    assert len(names) == 20 and layer.peephole_l1_reverse.shape == (3, 3)
    assert np.abs(layer.peephole_l0.data).max() <= 1 / np.sqrt(3)  # PyTorch's init range
    other = fastrnn.LSTM(4, 3, num_layers=2, bidirectional=True, peepholes=True, seed=2)
    other.load_state_dict(layer.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(other(x)[0], layer(x)[0])
    plain = fastrnn.LSTM(4, 3, num_layers=2, bidirectional=True)
    with pytest.raises((KeyError, ValueError), match="peephole_l0"):
        plain.load_state_dict(layer.state_dict())


@pytest.mark.parametrize("backend", numpy_backends())
def test_peephole_cell_steps_like_the_layer(backend):
    cell = fastrnn.LSTMCell(4, 3, peepholes=True, dtype=np.float64, seed=5, backend=backend)
    layer = fastrnn.LSTM(4, 3, peepholes=True, dtype=np.float64, backend=backend)
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 4))
    h, c = rng.standard_normal((2, 2, 3))
    out, (h_n, c_n) = layer(x, (h[None], c[None]))
    for t in range(4):
        h, c = cell(x[t], (h, c))
        np.testing.assert_allclose(h, out[t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c, c_n[0], rtol=1e-12, atol=1e-14)
    dx, (dh, dc) = cell.backward((np.ones_like(h), None))
    assert dx.shape == (2, 4) and np.any(cell.peephole.grad)


def test_projection_shapes_names_and_errors(tmp_path):
    layer = fastrnn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    assert repr(layer) == ("LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2, "
                           "dtype=float32)")
    shapes = {n: p.data.shape for n, p in layer.named_parameters()}
    assert shapes["weight_hh_l0"] == (24, 2) and shapes["weight_ih_l1"] == (24, 4)
    assert shapes["weight_hr_l1_reverse"] == (2, 6)
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    out, (h, c) = layer(x)
    assert out.shape == (5, 3, 4) and h.shape == (4, 3, 2) and c.shape == (4, 3, 6)
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(4, 3, 2\)"):
        layer(x, (c, c))
    with pytest.raises(ValueError, match="proj_size: expected 0 .* smaller than "
                                         "hidden_size=6, got 6"):
        fastrnn.LSTM(4, 6, proj_size=6)
    with pytest.raises(ValueError, match="got -1"):
        fastrnn.LSTM(4, 6, proj_size=-1)
    with pytest.raises(TypeError, match="proj_size: expected an integer, got 2.0"):
        fastrnn.LSTM(4, 6, proj_size=2.0)
    with pytest.raises(TypeError, match="proj_size"):
        fastrnn.GRU(4, 6, proj_size=2)
    onnx_module = pytest.importorskip("fastrnn.onnx")
    with pytest.raises(TypeError, match="LSTM with proj_size=2: ONNX's LSTM operator has no "
                                        "projection"):
        onnx_module.export(layer, tmp_path / "p.onnx")


def test_repr_info_and_errors():
    assert "peepholes=True" in repr(fastrnn.LSTM(4, 3, peepholes=True))
    assert "peepholes" not in repr(fastrnn.LSTM(4, 3))
    assert "reset_after=False" in repr(fastrnn.GRU(4, 3, reset_after=False))
    assert fastrnn.LSTM(4, 3, peepholes=True).peepholes
    with pytest.raises(TypeError, match="peepholes: expected True or False, got 1"):
        fastrnn.LSTM(4, 3, peepholes=1)
    with pytest.raises(TypeError, match="peepholes"):
        fastrnn.GRU(4, 3, peepholes=True)
    with pytest.raises(TypeError, match="reset_after: expected True or False"):
        fastrnn.GRU(4, 3, reset_after="no")


def test_changing_a_peephole_between_forward_and_backward_is_named():
    layer = fastrnn.LSTM(4, 3, peepholes=True, bias=False, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype(np.float32)
    out, _ = layer(x)
    layer.peephole_l0.data[0, 0] += 1
    with pytest.raises(RuntimeError, match="parameter 'peephole_l0' was changed in place"):
        layer.backward(np.ones_like(out))
