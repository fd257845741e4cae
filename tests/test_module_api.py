"""Module conveniences a PyTorch user expects: load_state_dict(strict=False), to(dtype),
double() / float(), attribute access, and quiet inf / NaN inputs."""

import numpy as np
import pytest

import fastrnn
from conftest import assert_close, numpy_backends
from fastrnn import nn


def _model(backend, dtype=np.float32):
    return nn.Sequential(nn.Embedding(11, 6, dtype=dtype, seed=0),
                         fastrnn.LSTM(6, 8, num_layers=2, dropout=0.3, backend=backend,
                                      seed=0, dtype=dtype),
                         nn.Dropout(0.2, seed=0), nn.Linear(8, 3, dtype=dtype, seed=0))


@pytest.mark.parametrize("backend", numpy_backends())
def test_double_and_float_convert_and_train_like_a_model_built_so(backend):
    tokens = np.random.default_rng(0).integers(0, 11, (7, 2))
    built = _model(backend, np.float64).eval()
    converted = _model(backend).eval()
    rnn = converted[1]
    converted[1].weight_hh_l0.grad = np.ones((32, 8), np.float32)
    assert converted.double() is converted
    assert rnn.dtype == np.float64 and rnn.weight_hh_l0.data.dtype == np.float64
    assert rnn.weight_hh_l0.grad.dtype == np.float64
    converted.load_state_dict(built.state_dict())
    assert_close(converted(tokens), built(tokens), np.float64, "output")
    converted.train()
    out = converted(tokens)
    converted.backward(np.ones_like(out))  # dtype checks follow the conversion
    assert all(p.grad.dtype == np.float64 for p in converted.parameters())
    converted.float()
    assert all(p.data.dtype == np.float32 for p in converted.parameters())
    assert converted.eval()(tokens).dtype == np.float32
    converted.to("cpu", np.float64)
    assert rnn.dtype == np.float64
    with pytest.raises(RuntimeError, match="before any forward"):
        rnn.backward(np.ones((7, 2, 8)))  # what forward saved is dropped by a conversion


@pytest.mark.parametrize("bad", ["cuda", np.int32, "float64", 3])
def test_to_refuses_what_it_cannot_do(bad):
    with pytest.raises((ValueError, TypeError), match="expected"):
        fastrnn.GRU(2, 3).to(bad)


def test_load_state_dict_strict_false_loads_what_is_there():
    a, b = fastrnn.GRU(3, 4, num_layers=2, seed=0), fastrnn.GRU(3, 4, num_layers=2, seed=1)
    sd = a.state_dict()
    del sd["weight_hh_l1"]
    sd["extra.weight"] = np.ones(2)
    with pytest.raises(KeyError, match=r"missing keys \['weight_hh_l1'\], unexpected keys "
                                       r"\['extra.weight'\]"):
        b.load_state_dict(sd)
    before = b.weight_hh_l1.data.copy()
    result = b.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["weight_hh_l1"] and result.unexpected_keys == [
        "extra.weight"]
    np.testing.assert_array_equal(b.weight_ih_l1.data, a.weight_ih_l1.data)
    np.testing.assert_array_equal(b.weight_hh_l1.data, before)
    assert fastrnn.GRU(3, 4, num_layers=2).load_state_dict(a.state_dict()) == ([], [])
    with pytest.raises(ValueError, match="'weight_ih_l0': expected shape"):
        b.load_state_dict({"weight_ih_l0": np.ones((2, 2))}, strict=False)


def test_parameters_and_children_are_attributes():
    model = _model(None)
    assert model[1].weight_ih_l1 is dict(model.named_parameters())["1.weight_ih_l1"]
    with pytest.raises(AttributeError, match="'LSTM' object has no attribute 'weight_ih_l2'"):
        model[1].weight_ih_l2


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_inf_and_nan_inputs_give_nan_without_warnings(backend, cell):
    """(pytest turns RuntimeWarnings into errors here.) PyTorch gives NaN silently."""
    Layer = {"rnn_tanh": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}[cell]
    layer = Layer(3, 4, num_layers=2, backend=backend, seed=0)
    x = np.array([[[np.inf, -np.inf, 1.0]], [[np.nan, 2, 3]]], np.float32)
    out, _ = layer(x)
    layer.backward(np.ones_like(out))
    assert np.isnan(out).any()
    loss, grad = nn.cross_entropy(nn.Linear(4, 3, seed=0)(out), np.zeros((2, 1), int))
    assert np.isnan(loss) and np.isnan(grad).any()
