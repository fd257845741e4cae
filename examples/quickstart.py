"""A short demo: an LSTM learns to add up a noisy sequence, trained by BPTT with plain SGD.

Run: ``python examples/quickstart.py [--backend numpy|cpu] [--steps N]``.
"""

import argparse
import time

import numpy as np

import fastrnn


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backend", default=None,
                        help="numpy, cpu, gpu or auto; unset: fastrnn's own selection")
    parser.add_argument("--steps", type=int, default=400, help="Adam steps")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    lstm = fastrnn.LSTM(1, 32, batch_first=True, backend=args.backend, seed=0)
    w_out = rng.uniform(-0.2, 0.2, (32, 1)).astype(np.float32)
    lr, t0 = 0.05, time.perf_counter()
    for step in range(args.steps + 1):
        x = rng.uniform(-1, 1, (32, 20, 1)).astype(np.float32)      # [B,T,I]
        target = x.sum(axis=1) / 4                                   # [B,1]
        out, _ = lstm(x)                                             # [B,T,H]
        pred = out[:, -1] @ w_out
        err = pred - target
        loss = float((err ** 2).mean())
        grad_pred = 2 * err / err.size
        grad_out = np.zeros_like(out)
        grad_out[:, -1] = grad_pred @ w_out.T
        lstm.zero_grad()
        lstm.backward(grad_out)
        w_out -= lr * 10 * (out[:, -1].T @ grad_pred)
        for p in lstm.parameters():
            p.data -= lr * 10 * p.grad
        if step % 50 == 0:
            print(f"step {step:4d}  mse {loss:.4f}")
    used = fastrnn.dispatch.resolve(args.backend, np)[0]
    print(f"done in {time.perf_counter() - t0:.1f} s on the {used} backend")
    return loss


if __name__ == "__main__":
    main()
