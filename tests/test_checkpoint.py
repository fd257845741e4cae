"""Checkpoints: what save writes, load reads; killed saves leave nothing behind once the
path is used again; errors name the target path."""

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from fastrnn import nn

CHILD = textwrap.dedent('''
    import sys

    import numpy as np

    import fastrnn

    model = fastrnn.LSTM(64, 512, num_layers=2, seed=0)  # ~14 MB of weights
    print("ready", flush=True)
    step = 0
    while True:
        for p in model.parameters():
            p.data += 1e-3
        fastrnn.save(sys.argv[1], {"model": model, "step": step})
        step += 1
''')


def _temporaries(folder):
    return [n for n in os.listdir(folder) if n.endswith(".fastrnn-tmp")]


def test_killed_saves_leave_a_loadable_checkpoint_and_no_temporaries(tmp_path):
    path = tmp_path / "model.npz"
    script = tmp_path / "saver.py"
    script.write_text(CHILD)
    rng = random.Random(0)
    seen_temporary = 0
    for _ in range(8):
        child = subprocess.Popen([sys.executable, str(script), str(path)],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        # (a save takes tens of milliseconds here: the kill lands anywhere in one)
        try:
            child.wait(timeout=rng.uniform(0.05, 0.6))
        except subprocess.TimeoutExpired:
            pass
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        seen_temporary += len(_temporaries(tmp_path))
        if path.exists():
            model = fastrnn.LSTM(64, 512, num_layers=2)
            extras = fastrnn.load(path, {"model": model})
            assert isinstance(extras["step"], int)
            assert _temporaries(tmp_path) == []  # load removed the dead save's file
    fastrnn.save(path, {"model": fastrnn.LSTM(64, 512, num_layers=2)})
    assert sorted(os.listdir(tmp_path)) == ["model.npz", "saver.py"]
    assert seen_temporary > 0, "no kill landed inside a save: the test proved nothing"


def test_temporaries_of_live_processes_are_left_alone(tmp_path):
    path = tmp_path / "m.npz"
    mine = tmp_path / f".m.npz.{os.getpid()}.abc.fastrnn-tmp"  # a save of ours in flight
    parent = tmp_path / f".m.npz.{os.getppid()}.abc.fastrnn-tmp"  # another live process
    other = tmp_path / ".other.npz.999999999.abc.fastrnn-tmp"  # another target's
    for f in (mine, parent, other):
        f.write_bytes(b"partial")
    fastrnn.save(path, {"model": fastrnn.GRU(2, 3)})
    assert mine.exists() and parent.exists() and other.exists()


@pytest.mark.parametrize("value,kind", [({"lr": 1e-3}, "dict"), (None, "NoneType"),
                                        ([1, "a", None], "list"),
                                        (np.array([object()]), "ndarray")])
def test_save_refuses_what_load_cannot_read_before_writing(tmp_path, value, kind):
    path = tmp_path / "ckpt.npz"
    model = nn.Sequential(fastrnn.GRU(2, 3), nn.Linear(3, 1))
    with pytest.raises(TypeError, match=rf"objects\['cfg'\]: .*got {kind}.*pickle"):
        fastrnn.save(path, {"model": model, "cfg": value})
    assert os.listdir(tmp_path) == []


def test_plain_values_round_trip(tmp_path):
    path = tmp_path / "ckpt.npz"
    model = fastrnn.GRU(2, 3, seed=0)
    values = {"epoch": 3, "lr": 1e-3, "name": "run-7", "done": True,
              "curve": np.array([0.5, 0.25])}
    fastrnn.save(path, {"model": model, **values})
    got = fastrnn.load(path, {"model": fastrnn.GRU(2, 3)})
    assert set(got) == set(values)
    for k in ("epoch", "lr", "name", "done"):
        assert got[k] == values[k] and type(got[k]) is type(values[k])
    np.testing.assert_array_equal(got["curve"], values["curve"])


def test_errors_name_the_target_path(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "ckpt.npz"
    with pytest.raises(FileNotFoundError, match=rf"save: cannot write {missing}: .* not a "):
        fastrnn.save(missing, {"model": fastrnn.GRU(2, 3)})
    (tmp_path / "a-file").write_text("")
    inside_file = tmp_path / "a-file" / "ckpt.npz"
    with pytest.raises(NotADirectoryError, match=rf"save: cannot write {inside_file}"):
        fastrnn.save(inside_file, {"model": fastrnn.GRU(2, 3)})

    def disk_full(f, **arrays):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", disk_full)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(OSError, match=rf"save: cannot write {path}: No space left"):
        fastrnn.save(path, {"model": fastrnn.GRU(2, 3)})
    assert sorted(os.listdir(tmp_path)) == ["a-file"]
