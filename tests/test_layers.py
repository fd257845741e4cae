"""The layer API: shapes, names, init, state dicts, modes, dropout, gradient accumulation."""

import numpy as np
import pytest

import fastrnn
from fastrnn.kernels.reference import sigmoid
from conftest import numpy_backends, rel_err

I, H = 5, 4


def _x(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("cls", [fastrnn.RNN, fastrnn.LSTM, fastrnn.GRU])
@pytest.mark.parametrize("bf", [False, True])
def test_shapes_and_dtypes(cls, bf):
    m = cls(I, H, num_layers=2, bidirectional=True, batch_first=bf)
    x = _x((3, 7, I) if bf else (7, 3, I))
    out, hn = m(x)
    assert out.shape == ((3, 7, 2 * H) if bf else (7, 3, 2 * H))
    assert out.dtype == np.float32
    h = hn[0] if cls is fastrnn.LSTM else hn
    assert h.shape == (4, 3, H)


def test_batch_first_gives_the_same_numbers_as_time_major():
    a = fastrnn.GRU(I, H, num_layers=2, seed=1, dtype=np.float64)
    b = fastrnn.GRU(I, H, num_layers=2, seed=1, dtype=np.float64, batch_first=True)
    x = _x((6, 3, I), np.float64)
    lengths = [6, 2, 4]
    out_a, h_a = a(x, lengths=lengths)
    out_b, h_b = b(x.transpose(1, 0, 2).copy(), lengths=lengths)
    np.testing.assert_array_equal(out_a, out_b.transpose(1, 0, 2))
    np.testing.assert_array_equal(h_a, h_b)
    g = _x(out_a.shape, np.float64, 3)
    dx_a, _ = a.backward(g)
    dx_b, _ = b.backward(g.transpose(1, 0, 2).copy())
    np.testing.assert_allclose(dx_a, dx_b.transpose(1, 0, 2), rtol=1e-12, atol=1e-14)


def test_parameter_names_follow_pytorch():
    m = fastrnn.LSTM(I, H, num_layers=2, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    assert names[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse",
                         "bias_hh_l0_reverse"]
    assert names[8] == "weight_ih_l1"
    assert m._parameters["weight_ih_l1"].shape == (4 * H, 2 * H)
    nb = fastrnn.GRU(I, H, bias=False)
    assert [n for n, _ in nb.named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    cell = fastrnn.LSTMCell(I, H)
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih",
                                                      "bias_hh"]


def test_init_is_pytorch_uniform_and_reproducible_from_seed():
    a = fastrnn.LSTM(I, 16, num_layers=2, seed=42)
    b = fastrnn.LSTM(I, 16, num_layers=2, seed=42)
    c = fastrnn.LSTM(I, 16, num_layers=2, seed=43)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(),
                                         c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert not np.array_equal(pa.data, pc.data), n
        assert np.abs(pa.data).max() <= 1 / np.sqrt(16)
        assert np.abs(pa.data).max() > 0.8 / np.sqrt(16)  # fills the range
        assert pa.dtype == np.float32


def test_state_dict_round_trip_and_rejections():
    a = fastrnn.GRU(I, H, num_layers=2, seed=1)
    b = fastrnn.GRU(I, H, num_layers=2, seed=2)
    sd = a.state_dict()
    b.load_state_dict({k: v.tolist() for k, v in sd.items()})  # any array-likes
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    sd["weight_ih_l0"][:] = 0  # a copy: the layer is unchanged
    assert np.abs(a._parameters["weight_ih_l0"].data).max() > 0
    good = a.state_dict()
    missing = dict(good)
    del missing["bias_hh_l1"]
    with pytest.raises(KeyError, match="bias_hh_l1"):
        b.load_state_dict(missing)
    with pytest.raises(KeyError, match="weight_extra"):
        b.load_state_dict(dict(good, weight_extra=np.ones(3)))
    with pytest.raises(ValueError, match="weight_hh_l0.*expected shape"):
        b.load_state_dict(dict(good, weight_hh_l0=np.ones((3, 3))))
    with pytest.raises(TypeError, match="bias_ih_l0.*int64"):
        b.load_state_dict(dict(good, bias_ih_l0=np.ones(3 * H, dtype=np.int64)))
    before = b.state_dict()
    with pytest.raises(ValueError):
        b.load_state_dict(dict(good, weight_hh_l1=np.ones((1, 1))))
    for k, v in b.state_dict().items():  # nothing changed by a rejected load
        np.testing.assert_array_equal(v, before[k])


def test_loads_a_pytorch_state_dict_with_one_comprehension():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(I, H, num_layers=2)
    m = fastrnn.LSTM(I, H, num_layers=2)
    m.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    x = _x((5, 2, I))
    out, _ = m(x)
    ref, _ = t(torch.from_numpy(x))
    assert rel_err(out, ref.detach().numpy()) < 1e-5


def test_gradients_accumulate_and_zero_grad_clears():
    m = fastrnn.RNN(I, H, dtype=np.float64, seed=0)
    x = _x((4, 2, I), np.float64)
    g = _x((4, 2, H), np.float64, 1)
    m(x)
    m.backward(g)
    first = {n: p.grad.copy() for n, p in m.named_parameters()}
    m(x)
    m.backward(g)
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * first[n], rtol=1e-12)
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_dropout_only_in_training_mode_and_reproducible():
    x = _x((6, 3, I))
    a = fastrnn.LSTM(I, H, num_layers=3, dropout=0.5, seed=3)
    b = fastrnn.LSTM(I, H, num_layers=3, dropout=0.5, seed=3)
    train_a, _ = a(x)
    train_b, _ = b(x)
    np.testing.assert_array_equal(train_a, train_b)  # same seed, same masks
    again, _ = a(x)
    assert not np.array_equal(train_a, again)  # fresh masks on each call
    a.eval()
    e1, _ = a(x)
    e2, _ = a(x)
    np.testing.assert_array_equal(e1, e2)
    plain = fastrnn.LSTM(I, H, num_layers=3, seed=3).eval()
    np.testing.assert_array_equal(e1, plain(x)[0])


def test_dropout_with_one_layer_warns_like_pytorch():
    with pytest.warns(UserWarning, match="num_layers=1"):
        fastrnn.GRU(I, H, dropout=0.2)


def test_rnn_sigmoid_follows_its_equation():
    m = fastrnn.RNN(I, H, nonlinearity="sigmoid", dtype=np.float64, seed=5)
    x = _x((3, 2, I), np.float64)
    out, hn = m(x)
    p = {n: q.data for n, q in m.named_parameters()}
    h = np.zeros((2, H))
    for t in range(3):
        h = 1 / (1 + np.exp(-(x[t] @ p["weight_ih_l0"].T + p["bias_ih_l0"]
                               + h @ p["weight_hh_l0"].T + p["bias_hh_l0"])))
        np.testing.assert_allclose(out[t], h, rtol=1e-13)
    np.testing.assert_allclose(hn[0], h, rtol=1e-13)


def test_lengths_zero_out_padding_and_freeze_state():
    m = fastrnn.LSTM(I, H, bidirectional=True, dtype=np.float64, seed=6)
    x = _x((6, 3, I), np.float64)
    lengths = np.array([6, 3, 0])
    out, (hn, cn) = m(x, lengths=lengths)
    assert np.all(out[3:, 1] == 0) and np.all(out[:, 2] == 0)
    # The sequence of length 3 gives the same numbers as running it alone, cut to 3 steps.
    alone, (hn1, cn1) = m(x[:3, 1:2])
    np.testing.assert_allclose(out[:3, 1:2], alone, rtol=1e-13)
    np.testing.assert_allclose(hn[:, 1:2], hn1, rtol=1e-13)
    # A sequence of length 0 keeps its initial (zero) state in both directions.
    assert np.all(hn[:, 2] == 0) and np.all(cn[:, 2] == 0)


@pytest.mark.parametrize("backend", numpy_backends())
def test_cells_step_equals_one_layer_sequence(backend):
    seq = fastrnn.GRU(I, H, dtype=np.float64, seed=8, backend=backend)
    cell = fastrnn.GRUCell(I, H, dtype=np.float64, seed=8, backend=backend)
    cell.load_state_dict({k[:-3]: v for k, v in seq.state_dict().items()})
    x = _x((5, 2, I), np.float64)
    out, _ = seq(x)
    h = None
    for t in range(5):
        h = cell(x[t], h)
        np.testing.assert_allclose(h, out[t], rtol=1e-13)
    single = cell(x[0, 0])  # unbatched step
    assert single.shape == (H,)


def test_layers_hold_float64_when_asked_and_reject_other_dtypes():
    assert fastrnn.RNN(I, H, dtype="float64")._parameters["weight_ih_l0"].dtype == np.float64
    with pytest.raises(TypeError, match="dtype"):
        fastrnn.RNN(I, H, dtype=np.float16)
    with pytest.raises(ValueError, match="nonlinearity"):
        fastrnn.RNN(I, H, nonlinearity="gelu")
    with pytest.raises(ValueError, match="hidden_size"):
        fastrnn.LSTM(I, 0)
    with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\]"):
        fastrnn.LSTM(I, H, dropout=1.01)
    with pytest.raises(ValueError, match="num_layers"):
        fastrnn.LSTM(I, H, num_layers=1.5)


def test_functional_sigmoid_is_overflow_safe():
    z = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=np.float32)
    s = sigmoid(z)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [0, 1.9287e-22, 0.5, 1, 1], rtol=1e-4, atol=0)


def test_to_moves_layers_between_devices_or_says_why_not():
    m = fastrnn.GRU(I, H, backend="cpu" if fastrnn.backends()["cpu"]["available"] else None)
    assert m.to("cpu") is m
    with pytest.raises(ValueError, match=r"to\(\): expected a device \('cpu' or 'gpu'\)"):
        m.to("cuda:0")
    if not fastrnn.backends()["gpu"]["available"]:
        with pytest.raises(fastrnn.BackendUnavailableError, match="'gpu' is not available"):
            m.to("gpu")
        return
    import cupy
    x = _x((4, 2, I))
    want, _ = m(x)
    m.to("gpu")
    assert m.backend == "gpu" and isinstance(m._parameters["weight_ih_l0"].data, cupy.ndarray)
    with pytest.raises(TypeError, match="parameters are cupy arrays, got a numpy array"):
        m(x)
    got, _ = m(cupy.asarray(x))
    np.testing.assert_allclose(got.get(), want, rtol=2e-4, atol=2e-5)
    m.to("cpu")
    assert m.backend is None


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_model_and_its_optimizer_copy_after_training_and_train_on_alike(how):
    """``copy.deepcopy`` (keeping the best model, an EMA copy) and ``pickle`` (handing a
    model to another process) work after forward and backward, as in PyTorch: parameters,
    gradients, optimizer state and random state come along, and the copy then trains step
    for step like the original. What the last forward saved for backward does not come
    along: the copy's backward before a forward of its own is a clear error."""
    import copy
    import pickle
    from fastrnn import nn, optim
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 10, (6, 3))
    model = nn.Sequential(nn.Embedding(10, 4, seed=1), nn.Dropout(0.3, seed=2),
                          fastrnn.LSTM(4, 8, num_layers=2, seed=3), nn.LastStep(),
                          nn.Linear(8, 3, seed=4))
    cell = fastrnn.GRUCell(3, 5, seed=5)
    opt = optim.Adam(model.parameters() + cell.parameters(), lr=1e-2)

    def step(m, c, o):
        out = m(idx)
        h = c(out)
        m.zero_grad()
        c.zero_grad()
        m.backward(c.backward(np.ones_like(h))[0])
        o.step()
        return h
    step(model, cell, opt)
    if how == "pickle":
        model2, cell2, opt2 = pickle.loads(pickle.dumps((model, cell, opt)))
    else:
        model2, cell2, opt2 = copy.deepcopy((model, cell, opt))
    for a, b in zip(model.parameters() + cell.parameters(),
                    model2.parameters() + cell2.parameters()):
        assert a is not b and np.array_equal(a.data, b.data) and np.array_equal(a.grad, b.grad)
    with pytest.raises(RuntimeError, match="before any forward"):
        model2.backward(np.ones((3, 3), np.float32))
    for _ in range(2):  # dropout masks, Adam's moments: the copy follows the original exactly
        np.testing.assert_array_equal(step(model, cell, opt), step(model2, cell2, opt2))
    for a, b in zip(model.parameters(), model2.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("make", [
    lambda **kw: fastrnn.RNNCell(I, H, nonlinearity="relu", **kw),
    lambda **kw: fastrnn.GRUCell(I, H, **kw),
    lambda **kw: fastrnn.GRUCell(I, H, reset_after=False, **kw),
    lambda **kw: fastrnn.LSTMCell(I, H, **kw),
    lambda **kw: fastrnn.LSTMCell(I, H, peepholes=True, bias=False, **kw)],
    ids=["rnn_relu", "gru", "gru_reset_before", "lstm", "lstm_peephole_no_bias"])
def test_an_eval_step_computes_what_a_training_step_does(make, backend):
    """Inference steps go straight to the kernels (no saving): the same numbers as a
    training step, batched and unbatched, with and without given states."""
    cell = make(dtype=np.float64, seed=3, backend=backend)
    lstm = isinstance(cell, fastrnn.LSTMCell)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, I))
    state = rng.standard_normal((2, 3, H))
    for args in ((x,), (x, (state[0], state[1]) if lstm else state[0]),
                 (x[0],), (x[0], (state[0, 0], state[1, 0]) if lstm else state[0, 0])):
        want = cell.train()(*args)
        got = cell.eval()(*args)
        for g, w in zip(got if lstm else (got,), want if lstm else (want,)):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15)
