"""Bad input gets a clear error that names the argument, what was expected and what came."""

import numpy as np
import pytest

import fastrnn
from fastrnn import Weights
from fastrnn import functional as F

I, H = 4, 3


def _x(shape, dtype=np.float32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


@pytest.fixture
def lstm():
    return fastrnn.LSTM(I, H, num_layers=2)


@pytest.mark.parametrize("shape", [(I,), (2, 3, 4, I)])
def test_wrong_rank(lstm, shape):
    with pytest.raises(ValueError, match=r"x: expected a 2-D or 3-D array.*got shape"):
        lstm(_x(shape))


def test_wrong_feature_size(lstm):
    with pytest.raises(ValueError, match=r"x: expected 4 input features.*\(5, 2, 7\)"):
        lstm(_x((5, 2, 7)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex64, np.float16, bool])
def test_non_float_dtypes(lstm, dtype):
    with pytest.raises(TypeError, match="x: expected a float32 or float64 array, got dtype"):
        lstm(np.ones((5, 2, I), dtype=dtype))


def test_mismatched_dtypes(lstm):
    with pytest.raises(TypeError, match="x: expected dtype float32.*got float64"):
        lstm(_x((5, 2, I), np.float64))
    h = np.zeros((2, 2, H), np.float64)
    with pytest.raises(TypeError, match=r"hx\[0\]: expected dtype float32.*got float64"):
        lstm(_x((5, 2, I)), (h, h.astype(np.float32)))


def test_wrong_hx_shape(lstm):
    x = _x((5, 2, I))
    good = np.zeros((2, 2, H), np.float32)
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(2, 2, 3\), got \(1, 2, 3\)"):
        lstm(x, (np.zeros((1, 2, H), np.float32), good))
    with pytest.raises(ValueError, match=r"hx\[1\]: expected shape \(2, 2, 3\), got \(2, 2, 4\)"):
        lstm(x, (good, np.zeros((2, 2, 4), np.float32)))
    with pytest.raises(TypeError, match="hx: expected a tuple"):
        lstm(x, good)
    with pytest.raises(TypeError, match="hx: expected both"):
        lstm(x, (good, None))
    gru = fastrnn.GRU(I, H)
    with pytest.raises(ValueError, match=r"hx: expected shape \(1, 2, 3\)"):
        gru(x, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"hx: expected shape \(1, 3\)"):
        gru(_x((5, I)), np.zeros((1, 2, 3), np.float32))


@pytest.mark.parametrize("lengths,pattern", [
    ([5, 6], r"lengths: expected values in \[0, 5\].*got 6"),
    ([5, -1], r"lengths: expected values in \[0, 5\].*got -1"),
    ([5], r"lengths: expected shape \(2,\).*got \(1,\)"),
    ([5, 2, 1], r"lengths: expected shape \(2,\)"),
    ([[5, 2]], r"lengths: expected shape \(2,\)"),
])
def test_lengths_out_of_range_or_wrong_length(lstm, lengths, pattern):
    with pytest.raises(ValueError, match=pattern):
        lstm(_x((5, 2, I)), lengths=lengths)


def test_lengths_of_floats(lstm):
    with pytest.raises(TypeError, match="lengths: expected integers, got dtype float64"):
        lstm(_x((5, 2, I)), lengths=np.array([5.0, 2.0]))


def test_lengths_with_unbatched_input(lstm):
    with pytest.raises(ValueError, match="lengths: not accepted with an unbatched"):
        lstm(_x((5, I)), lengths=[5])


def test_backward_before_forward_twice_and_after_eval(lstm):
    g = _x((5, 2, H))
    with pytest.raises(RuntimeError, match="before any forward"):
        lstm.backward(g)
    lstm(_x((5, 2, I)))
    lstm.backward(g)
    with pytest.raises(RuntimeError, match="twice for one forward"):
        lstm.backward(g)
    lstm.eval()
    lstm(_x((5, 2, I)))
    with pytest.raises(RuntimeError, match="eval mode"):
        lstm.backward(g)


def test_backward_gradient_shapes(lstm):
    lstm(_x((5, 2, I)))
    with pytest.raises(ValueError, match=r"grad_output: expected shape \(5, 2, 3\), got"):
        lstm.backward(_x((5, 2, 4)))
    with pytest.raises(TypeError, match="grad_output: expected dtype float32"):
        lstm.backward(_x((5, 2, H), np.float64))
    with pytest.raises(ValueError, match=r"grad_c_n: expected shape \(2, 2, 3\)"):
        lstm.backward(_x((5, 2, H)), (None, _x((1, 2, H))))


def test_cell_backward_errors():
    cell = fastrnn.GRUCell(I, H)
    with pytest.raises(RuntimeError, match="more times than"):
        cell.backward(_x((2, H)))
    h = cell(_x((2, I)))
    with pytest.raises(ValueError, match=r"grad_h: expected shape \(2, 3\)"):
        cell.backward(_x((3, H)))
    cell.backward(np.ones_like(h))
    cell.eval()
    cell(_x((2, I)))
    with pytest.raises(RuntimeError, match="eval mode"):
        cell.backward(h)
    with pytest.raises(ValueError, match=r"x: expected a 1-D or 2-D array"):
        cell(_x((3, 2, I)))


def test_non_arrays_are_not_coerced(lstm):
    with pytest.raises(TypeError, match="x: expected a NumPy or CuPy array, got builtins.list"):
        lstm([[[0.0] * I]])
    x = _x((5, 2, I), np.float64)
    w = Weights(np.ones((4 * H, I)), np.ones((4 * H, H)).tolist(), np.ones(4 * H),
                np.ones(4 * H))
    with pytest.raises(TypeError, match=r"weights\[0\].w_hh: expected a NumPy or CuPy array, "
                                        "got builtins.list"):
        F.rnn("lstm", x, [w])
    with pytest.raises(TypeError, match=r"weights\[0\]: expected fastrnn.Weights"):
        F.rnn("lstm", x, [tuple(w)])


def test_functional_checks_weights_and_arguments():
    x = _x((5, 2, I), np.float64)
    w = Weights(np.ones((4 * H, I)), np.ones((4 * H, H)), np.ones(4 * H), np.ones(4 * H))
    with pytest.raises(ValueError, match="cell: expected one of"):
        F.rnn("lstmx", x, [w])
    with pytest.raises(ValueError,
                       match=r"weights\[0\].w_hh: expected shape \(9, 3\), got \(12, 3\)"):
        F.rnn("gru", x, [Weights(np.ones((9, I)), np.ones((12, 3)))])
    with pytest.raises(ValueError, match=r"weights: expected 2 .* got 1"):
        F.rnn("lstm", x, [w], bidirectional=True)
    with pytest.raises(TypeError, match=r"weights: expected a list of 1 fastrnn.Weights"):
        F.rnn("lstm", x, w)
    with pytest.raises(ValueError, match=r"weights\[1\]: expected the fields \('w_ih', "
                                         r"'w_hh', 'b_ih', 'b_hh'\) for 'lstm' \(b_ih and "
                                         r"b_hh both arrays or both None\), got \('w_ih', "
                                         r"'w_hh', 'b_ih'\)"):
        F.rnn("lstm", x, [w, w._replace(b_hh=None)], bidirectional=True)
    with pytest.raises(ValueError, match=r"weights\[0\].w_hr: expected a projection \[P,H\] "
                                         r"with 0 < P < H=3, got shape \(3, 3\)"):
        F.rnn("lstm", x, [w._replace(w_hr=np.ones((3, H)))])
    with pytest.raises(ValueError, match="weights\\[0\\].w_hr: only the LSTMs have a "
                                         "projection"):
        F.rnn("gru", x, [Weights(np.ones((9, I)), np.ones((9, 2)), w_hr=np.ones((2, H)))])
    with pytest.raises(ValueError, match=r"weights\[0\]: expected the fields .* for "
                                         r"'lstm_peephole'"):
        F.rnn("lstm_peephole", x, [w])
    with pytest.raises(ValueError, match=r"weights\[0\].peepholes: expected shape \(3, 3\)"):
        F.rnn("lstm_peephole", x, [w._replace(peepholes=np.ones((4, H)))])
    with pytest.raises(TypeError, match=r"weights\[0\].b_ih: expected dtype float64 to match"):
        F.rnn("lstm", x, [w._replace(b_ih=np.ones(4 * H, np.float32))])
    with pytest.raises(ValueError, match="c0: only the LSTM"):
        F.rnn("gru", x, [Weights(np.ones((9, I)), np.ones((9, H)))], c0=np.zeros((1, 2, H)))
    with pytest.raises(ValueError, match="dropout"):
        F.rnn("lstm", x, [w], dropout=-0.1)
    with pytest.raises(RuntimeError, match="ctx is None"):
        F.rnn_backward(None, x)
