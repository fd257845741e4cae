"""Fork safety: ``multiprocessing`` pools whose workers run the cpu backend (on two threads)
give the reference's results, whether or not the parent used the backend before forking,
and the parent keeps working; ``spawn`` and ``forkserver`` too. Each case runs in its own
interpreter with a time limit, so that a hang or an abort fails the test instead of the
test session."""

import subprocess
import sys
import textwrap

import pytest

from conftest import backend_param

SCRIPT = textwrap.dedent('''
    import multiprocessing as mp
    import sys

    import numpy as np

    import fastrnn


    def work(seed):
        """Largest difference between the cpu backend and the reference: outputs, input
        gradient, a weight gradient (a GRU big enough for two threads)."""
        x = np.random.default_rng(seed).standard_normal((40, 32, 16))
        got = {}
        for backend in ("cpu", "numpy"):
            gru = fastrnn.GRU(16, 128, backend=backend, seed=seed, dtype=np.float64)
            y, _ = gru(x)
            dx, _ = gru.backward(np.cos(y))
            got[backend] = (y, dx, gru.weight_hh_l0.grad)
        return max(float(np.abs(a - b).max()) for a, b in zip(got["cpu"], got["numpy"]))


    if __name__ == "__main__":
        method, parent_first = sys.argv[1], sys.argv[2] == "1"
        if parent_first:
            assert work(99) < 1e-10
        with mp.get_context(method).Pool(2) as pool:
            errors = pool.map(work, range(4))
        assert max(errors) < 1e-10, errors
        if method == "fork":  # a child that forks again
            ctx = mp.get_context("fork")
            child = ctx.Process(target=lambda: sys.exit(0 if ctx.Pool(1).apply(work, (5,))
                                                        < 1e-10 else 3))
            child.start()
            child.join(120)
            assert child.exitcode == 0, child.exitcode
        assert work(7) < 1e-10  # the parent is unaffected
        print("children agree with the reference", errors)
''')


@pytest.mark.parametrize("backend", [backend_param("cpu")])
@pytest.mark.parametrize("method,parent_first", [("fork", "1"), ("fork", "0"),
                                                 ("spawn", "1"), ("forkserver", "1")])
def test_process_pools_run_the_cpu_backend(tmp_path, backend, method, parent_first):
    script = tmp_path / "pool_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), method, parent_first],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "children agree with the reference" in done.stdout
