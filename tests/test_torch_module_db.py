"""fastrnn.torch on PyTorch's own test inputs for its recurrent modules (``module_db`` of
``torch.testing._internal.common_modules``: every constructor option and input form
PyTorch tests RNN, LSTM, GRU and their cells with), checked as PyTorch checks torch.nn:
outputs equal to torch.nn's, gradcheck with batched gradients, save and load,
non-contiguous inputs. Double backward is not supported, so gradgradcheck is left out."""

import io

import pytest

torch = pytest.importorskip("torch")
common_modules = pytest.importorskip("torch.testing._internal.common_modules",
                                     reason="PyTorch's test helpers need expecttest")

import fastrnn.torch as ft  # noqa: E402  (after the skip: it imports torch)
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten  # noqa: E402

NAMES = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]
INFOS = {m.module_cls.__name__: m for m in common_modules.module_db
         if m.module_cls in tuple(getattr(torch.nn, n) for n in NAMES)}
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def _inputs(name, dtype, training, requires_grad=True):
    info = INFOS[name]
    return [mi for mi in info.module_inputs_func(info, device="cpu", dtype=dtype,
                                                 requires_grad=requires_grad,
                                                 training=training)
            if mi.forward_input is not None]


def _pair(name, module_input, dtype, training):
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    ref = getattr(torch.nn, name)(*args, **kwargs).to(dtype).train(training)
    ours = getattr(ft, name)(*args, **kwargs).to(dtype).train(training)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _run(module, module_input, seed=0):
    torch.manual_seed(seed)  # (dropout between layers draws from torch's generator)
    return module(*module_input.forward_input.args, **module_input.forward_input.kwargs)


def _assert_close(got, want, dtype, what):
    got, want = tree_leaves(got), tree_leaves(want)
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        if isinstance(w, torch.nn.utils.rnn.PackedSequence):
            g, w = g.data, w.data
        assert g.shape == w.shape, what
        torch.testing.assert_close(g, w, **TOL[dtype], msg=lambda m: f"{what}: {m}")


def _ids():
    return [f"{n}-{'train' if t else 'eval'}" for n in NAMES for t in (True, False)]


CASES = [(n, t) for n in NAMES for t in (True, False)]


@pytest.mark.parametrize("name,training", CASES, ids=_ids())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_equals_torch_nn(name, training, dtype):
    for k, mi in enumerate(_inputs(name, dtype, training, requires_grad=False)):
        ours, ref = _pair(name, mi, dtype, training)
        _assert_close(_run(ours, mi), _run(ref, mi), dtype, f"input {k}: {mi}")


@pytest.mark.parametrize("name,training", CASES, ids=_ids())
def test_gradcheck_with_batched_gradients(name, training):
    """Input, state and parameter gradients against finite differences, and under vmap
    (gradcheck's batched check), on every input form."""
    for k, mi in enumerate(_inputs(name, torch.float64, training)):
        ours, _ = _pair(name, mi, torch.float64, training)
        args, kwargs = mi.forward_input.args, mi.forward_input.kwargs
        flat, spec = tree_flatten((args, tuple(ours.parameters())))
        tensors = [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]

        def fn(*values, flat=flat, spec=spec, kwargs=kwargs):
            it = iter(values)
            filled = [next(it) if isinstance(t, torch.Tensor) and t.requires_grad else t
                      for t in flat]
            new_args, new_params = tree_unflatten(filled, spec)
            params = dict(zip(dict(ours.named_parameters()), new_params))
            torch.manual_seed(0)
            out = torch.func.functional_call(ours, params, new_args, kwargs)
            return tuple(t.data if isinstance(t, torch.nn.utils.rnn.PackedSequence) else t
                         for t in tree_leaves(out))

        assert torch.autograd.gradcheck(fn, tensors, check_batched_grad=True,
                                        fast_mode=True), f"input {k}: {mi}"


@pytest.mark.parametrize("name,training", CASES, ids=_ids())
def test_save_and_load_give_the_same_outputs(name, training):
    for mi in _inputs(name, torch.float64, training, requires_grad=False):
        ours, _ = _pair(name, mi, torch.float64, training)
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        copy = torch.load(buffer, weights_only=False)
        assert type(copy) is type(ours)
        _assert_close(_run(copy, mi), _run(ours, mi), torch.float64, "reloaded")


def _non_contiguous(t):
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
    return out.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("name,training", CASES, ids=_ids())
def test_non_contiguous_inputs_give_the_same_outputs_and_gradients(name, training):
    for mi in _inputs(name, torch.float64, training):
        ours, _ = _pair(name, mi, torch.float64, training)
        results = []
        for args in (mi.forward_input.args, tree_map(_non_contiguous, mi.forward_input.args)):
            ours.zero_grad()
            torch.manual_seed(0)
            out = tree_leaves(ours(*args, **mi.forward_input.kwargs))
            out = [o.data if isinstance(o, torch.nn.utils.rnn.PackedSequence) else o
                   for o in out]
            inputs = [a for a in tree_leaves(args) if isinstance(a, torch.Tensor)
                      and a.requires_grad]
            grads = torch.autograd.grad(sum(o.sum() * (j + 1) for j, o in enumerate(out)),
                                        inputs + list(ours.parameters()), allow_unused=True)
            results.append((out, grads))
        _assert_close(results[1][0], results[0][0], torch.float64, "outputs")
        for g, w in zip(*(r[1] for r in results)):
            if w is not None:
                torch.testing.assert_close(g, w, **TOL[torch.float64])
