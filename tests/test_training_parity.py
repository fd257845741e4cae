"""Training parity with PyTorch: same model, weights and batches, 20 steps in float64."""

import numpy as np
import pytest

import fastrnn
from fastrnn import nn, optim

torch = pytest.importorskip("torch")

STEPS = 20


def _copy_into_torch(ours, theirs):
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                            ours.state_dict().items()})


def _rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


def _many_to_many():
    ours = nn.Sequential(fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True,
                                      dtype=np.float64, seed=1),
                         nn.Linear(16, 3, dtype=np.float64, seed=2))
    theirs = torch.nn.ModuleDict({"0": torch.nn.LSTM(5, 8, num_layers=2,
                                                     bidirectional=True).double(),
                                  "1": torch.nn.Linear(16, 3).double()})
    return ours, theirs


def _many_to_one():
    ours = nn.Sequential(fastrnn.GRU(5, 8, dtype=np.float64, seed=3), nn.LastStep(),
                         nn.Linear(8, 4, dtype=np.float64, seed=4))
    theirs = torch.nn.ModuleDict({"0": torch.nn.GRU(5, 8).double(),
                                  "2": torch.nn.Linear(8, 4).double()})
    return ours, theirs


def _torch_forward(kind, theirs, x, lengths):
    if kind == "m2m":
        out, _ = theirs["0"](x)
        return theirs["1"](out)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                     enforce_sorted=False)
    out, _ = theirs["0"](packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
    last = out[torch.tensor(lengths) - 1, torch.arange(x.shape[1])]
    return theirs["2"](last)


@pytest.mark.parametrize("kind", ["m2m", "m2o"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_twenty_steps_match_pytorch(kind, opt):
    ours, theirs = _many_to_many() if kind == "m2m" else _many_to_one()
    _copy_into_torch(ours, theirs)
    if opt == "sgd":
        o = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                      weight_decay=1e-3)
        t = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                            weight_decay=1e-3)
    else:
        o = optim.Adam(ours.parameters(), lr=0.02, weight_decay=1e-3)
        t = torch.optim.Adam(theirs.parameters(), lr=0.02, weight_decay=1e-3)
    rng = np.random.default_rng(7)
    for step in range(STEPS):
        x = rng.standard_normal((6, 4, 5))
        lengths = rng.integers(1, 7, 4)
        if kind == "m2m":
            y = rng.standard_normal((6, 4, 3))
            pred = ours(x)
            loss, grad = nn.mse_loss(pred, y)
            ref = torch.nn.functional.mse_loss(_torch_forward(kind, theirs, torch.tensor(x),
                                                              None), torch.tensor(y))
        else:
            y = rng.integers(0, 4, 4)
            pred = ours(x, lengths)
            loss, grad = nn.cross_entropy(pred, y)
            ref = torch.nn.functional.cross_entropy(
                _torch_forward(kind, theirs, torch.tensor(x), lengths), torch.tensor(y))
        o.zero_grad()
        ours.backward(grad)
        norm = optim.clip_grad_norm_(ours.parameters(), 0.5)
        o.step()
        t.zero_grad()
        ref.backward()
        tnorm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        t.step()
        assert abs(loss - ref.item()) <= 1e-8 * abs(ref.item()), step
        assert abs(norm - tnorm.item()) <= 1e-8 * tnorm.item(), step
    ours_sd = ours.state_dict()
    for name, value in theirs.state_dict().items():
        assert _rel(ours_sd[name], value.numpy()) < 1e-8, name
