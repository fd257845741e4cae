"""nn modules and losses against PyTorch, checkpoints round trip and survive a crash."""

import os

import numpy as np
import pytest

import fastrnn
from fastrnn import nn, optim

torch = pytest.importorskip("torch")


def test_linear_matches_pytorch_on_any_leading_shape():
    ours = nn.Linear(5, 3, dtype=np.float64, seed=0)
    theirs = torch.nn.Linear(5, 3).double()
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 2, 5))
    g = np.random.default_rng(1).standard_normal((4, 2, 3))
    xt = torch.tensor(x, requires_grad=True)
    out = theirs(xt)
    out.backward(torch.tensor(g))
    np.testing.assert_allclose(ours(x), out.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(ours.backward(g), xt.grad.numpy(), rtol=1e-13)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, dict(theirs.named_parameters())[name].grad.numpy(),
                                   rtol=1e-13)


def test_embedding_accumulates_repeated_indices():
    emb = nn.Embedding(6, 3, dtype=np.float64, seed=0)
    idx = np.array([[1, 2, 1], [5, 1, 0]])
    out = emb(idx)
    np.testing.assert_array_equal(out, emb._parameters["weight"].data[idx])
    g = np.random.default_rng(0).standard_normal((2, 3, 3))
    assert emb.backward(g) is None
    want = np.zeros((6, 3))
    np.add.at(want, idx.reshape(-1), g.reshape(-1, 3))
    np.testing.assert_allclose(emb._parameters["weight"].grad, want, rtol=1e-14)
    with pytest.raises(ValueError, match=r"indices: expected values in \[0, 6\)"):
        emb(np.array([6]))
    with pytest.raises(TypeError, match="indices: expected an integer array"):
        emb(np.array([1.0]))


def test_dropout_train_and_eval():
    d = nn.Dropout(0.3, seed=0)
    x = np.ones((200, 50), np.float32)
    y = d(x)
    kept = y != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), y)
    d.eval()
    np.testing.assert_array_equal(d(x), x)


@pytest.mark.parametrize("directions", [1, 2])
def test_last_step_picks_final_states(directions):
    lstm = fastrnn.LSTM(3, 4, bidirectional=directions == 2, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 3, 3))
    lengths = [6, 2, 4]
    out, (h_n, _) = lstm(x, lengths=lengths)
    last = nn.LastStep(batch_first=False, directions=directions)
    picked = last(out, lengths)
    want = np.concatenate(list(h_n), axis=1)  # final state of each direction
    np.testing.assert_allclose(picked, want, rtol=1e-13)
    g = np.random.default_rng(1).standard_normal(picked.shape)
    back = last.backward(g)
    assert back.shape == out.shape
    assert np.isclose((back * out).sum(), (g * picked).sum())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_last_step_follows_the_layer_before_it(bidirectional):
    """Batch size equal to the sequence length: a LastStep that guessed the layout would
    pick the wrong steps without any error."""
    rng = np.random.default_rng(2)
    lstm = fastrnn.LSTM(3, 4, batch_first=True, bidirectional=bidirectional,
                        dtype=np.float64, seed=0)
    last = nn.LastStep()
    model = nn.Sequential(lstm, nn.Dropout(0.5), last)
    model.eval()
    assert last.batch_first is True and last.directions == (2 if bidirectional else 1)
    x = rng.standard_normal((5, 5, 3))  # [B,T,I], B == T
    lengths = [5, 2, 4, 1, 3]
    picked = model(x, lengths=lengths)
    _, (h_n, _) = lstm(x, lengths=lengths)
    np.testing.assert_allclose(picked, np.concatenate(list(h_n), axis=1), rtol=1e-13)


def test_last_step_refuses_to_guess():
    x = np.random.default_rng(0).standard_normal((4, 4, 6))
    with pytest.raises(ValueError, match="LastStep: batch_first and directions unknown"):
        nn.LastStep()(x)
    with pytest.raises(ValueError, match="LastStep: batch_first unknown"):
        nn.LastStep(directions=1)(x)
    with pytest.raises(ValueError, match=r"modules\[1\] after modules\[0\]: LastStep\("
                                         r"directions=1\) follows a LSTM whose output has "
                                         r"directions=2"):
        nn.Sequential(fastrnn.LSTM(3, 3, bidirectional=True), nn.LastStep(directions=1))
    with pytest.raises(ValueError, match=r"LastStep\(batch_first=False\) follows a GRU"):
        nn.Sequential(fastrnn.GRU(3, 3, batch_first=True), nn.LastStep(batch_first=False))
    with pytest.raises(ValueError, match="directions: expected 1, 2 or None, got 3"):
        nn.LastStep(directions=3)
    after_linear = nn.Sequential(fastrnn.GRU(3, 6), nn.Linear(6, 6), nn.LastStep())
    with pytest.raises(ValueError, match="unknown"):
        after_linear(np.ones((4, 2, 3), np.float32))


def test_sequential_names_and_many_to_one_backward():
    model = nn.Sequential(nn.Embedding(10, 4, seed=0), fastrnn.GRU(4, 6, seed=1),
                          nn.LastStep(), nn.Linear(6, 2, seed=2))
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "0.weight" and names[1] == "1.weight_ih_l0" and names[-1] == "3.bias"
    idx = np.random.default_rng(0).integers(0, 10, (5, 3))
    logits = model(idx, lengths=[5, 3, 1])
    loss, grad = nn.cross_entropy(logits, np.array([0, 1, 1]))
    assert model.backward(grad) is None
    assert all(p.grad is not None for p in model.parameters())


def test_losses_reject_bad_input():
    with pytest.raises(ValueError, match="target: expected shape"):
        nn.mse_loss(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(TypeError, match="target: expected integer class indices"):
        nn.cross_entropy(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match=r"target: expected classes in \[0, 3\)"):
        nn.cross_entropy(np.ones((2, 3)), np.array([0, 3]))
    loss, grad = nn.cross_entropy(np.ones((2, 3)), np.array([0, -100]))
    assert np.isclose(loss, np.log(3)) and np.all(grad[1] == 0)


def test_cross_entropy_over_padding_only_is_zero_not_nan():
    """A batch whose every position is ignored or masked: 0 and a zero gradient (PyTorch's
    mean gives NaN, which would reach the parameters at the next step)."""
    loss, grad = nn.cross_entropy(np.ones((2, 3)), np.array([-100, 1]),
                                  mask=np.array([True, False]))
    assert loss == 0 and str(loss) == "0.0" and grad.shape == (2, 3) and not np.any(grad)


def _model_and_opt(seed):
    model = nn.Sequential(fastrnn.LSTM(3, 4, seed=seed), nn.Linear(4, 2, seed=seed))
    opt = optim.Adam(model.parameters(), lr=0.01)
    x = np.random.default_rng(seed).standard_normal((5, 2, 3)).astype(np.float32)
    loss, grad = nn.mse_loss(model(x), np.zeros((5, 2, 2), np.float32))
    model.backward(grad)
    opt.step()
    return model, opt


def test_checkpoint_round_trip(tmp_path):
    model, opt = _model_and_opt(0)
    path = tmp_path / "ckpt.npz"
    fastrnn.save(path, {"model": model, "optim": opt, "epoch": 7})
    other, other_opt = _model_and_opt(1)
    extras = fastrnn.load(path, {"model": other, "optim": other_opt})
    assert extras == {"epoch": 7}
    for (_, p), (_, q) in zip(model.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert other_opt.steps == opt.steps == 1
    for a, b in zip(opt.state, other_opt.state):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    wrong = nn.Sequential(fastrnn.LSTM(3, 5), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="model/0.weight_ih_l0: expected shape"):
        fastrnn.load(path, {"model": wrong})
    with pytest.raises(KeyError, match="no entries for 'net'"):
        fastrnn.load(path, {"net": other, "optim": other_opt})


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _model_and_opt(0)
    path = tmp_path / "ckpt.npz"
    fastrnn.save(path, {"model": model, "optim": opt})
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        fastrnn.save(path, {"model": model, "optim": opt, "epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
