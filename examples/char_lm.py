"""Character-level language model: an LSTM learns to predict the next character of real
English text, then writes new text one character at a time with LSTMCell.

Default corpus: the documentation strings of Python's standard library, read at run time
(on every machine, no download); or any text file given with --text. Reports bits per
character on held-out text (the last tenth of the corpus).

    python examples/char_lm.py                 # about a minute on 2 cores (cpu backend)
    python examples/char_lm.py --text book.txt --steps 3000 --hidden 256
"""

import importlib
import inspect
import math
import time

import numpy as np

import fastrnn
from fastrnn import nn, optim

from _common import Progress, backend_name, parser

STDLIB = ("abc argparse ast base64 bisect calendar collections contextlib copy csv "
          "dataclasses datetime decimal difflib enum fractions functools glob heapq hmac "
          "inspect ipaddress itertools json logging math operator pathlib pickle pprint "
          "queue random re shlex shutil statistics string tempfile textwrap threading "
          "typing unittest uuid warnings zipfile").split()


def stdlib_docstrings():
    """English prose from the standard library's docstrings (modules and their members)."""
    parts = []
    for name in STDLIB:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod)]
        for attr, obj in sorted(vars(mod).items()):
            if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)):
                docs.append(inspect.getdoc(obj))
        parts += [d for d in docs if d]
    text = "\n\n".join(parts)
    return "".join(ch for ch in text if ch == "\n" or 32 <= ord(ch) < 127)


def batches(data, steps, batch, length, rng):
    """Random windows: inputs ``[T,B]`` and next-character targets ``[T,B]``."""
    for _ in range(steps):
        start = rng.integers(0, len(data) - length - 1, batch)
        idx = start[None, :] + np.arange(length)[:, None]
        yield data[idx], data[idx + 1]


def bits_per_char(model, data, length, batch):
    """Average next-character loss over held-out windows, in bits."""
    model.eval()
    total, count = 0.0, 0
    starts = np.arange(0, len(data) - length - 1, length)
    for k in range(0, len(starts), batch):
        s = starts[k:k + batch]
        idx = s[None, :] + np.arange(length)[:, None]
        loss, _ = nn.cross_entropy(model(data[idx]), data[idx + 1])
        total += loss * idx.size
        count += idx.size
    model.train()
    return total / count / math.log(2)


def sample(model, vocab, prime, n, temperature, rng):
    """Generate ``n`` characters one at a time with LSTMCells holding the trained weights."""
    emb, lstm, head = model[0], model[1], model[2]
    cells = []
    for layer in range(lstm.num_layers):
        cell = fastrnn.LSTMCell(lstm.input_size if layer == 0 else lstm.hidden_size,
                                lstm.hidden_size, dtype=lstm.dtype, backend=lstm.backend)
        cell.load_state_dict({k: lstm.state_dict()[f"{k}_l{layer}"]
                              for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        cells.append(cell.eval())
    states = [None] * len(cells)
    emb.eval()
    head.eval()
    lookup = {ch: k for k, ch in enumerate(vocab)}
    out = []
    token = lookup.get(prime[0], 0)
    for k in range(len(prime) + n - 1):
        x = emb(np.array([token]))
        for i, cell in enumerate(cells):
            states[i] = cell(x, states[i])
            x = states[i][0]
        if k + 1 < len(prime):
            token = lookup.get(prime[k + 1], 0)
            continue
        logits = head(x)[0] / temperature
        p = np.exp(logits - logits.max())
        token = int(rng.choice(len(vocab), p=p / p.sum()))
        out.append(vocab[token])
    return prime + "".join(out)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--text", help="train on this text file instead of the stdlib docstrings")
    p.add_argument("--steps", type=int, default=1500, help="Adam steps")
    p.add_argument("--hidden", type=int, default=192, help="LSTM units per layer")
    p.add_argument("--layers", type=int, default=1, help="stacked LSTM layers")
    p.add_argument("--batch", type=int, default=32, help="windows per step")
    p.add_argument("--length", type=int, default=64, help="characters per training window")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--sample", type=int, default=300, help="characters to generate")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.hidden, args.batch, args.length, args.sample = 20, 32, 8, 16, 40

    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
        source = args.text
    else:
        text = stdlib_docstrings()
        source = f"docstrings of {len(STDLIB)} standard-library modules"
    if args.smoke:
        text = text[:20000]
    vocab = sorted(set(text))
    data = np.searchsorted(np.array(vocab), np.array(list(text)))  # vocab is sorted
    split = int(0.9 * len(data))
    train, held_out = data[:split], data[split:]
    print(f"corpus: {source}, {len(text):,} characters, {len(vocab)} distinct")

    rng = np.random.default_rng(args.seed)
    kw = dict(backend=args.backend, seed=args.seed)
    model = nn.Sequential(nn.Embedding(len(vocab), 32, **kw),
                          fastrnn.LSTM(32, args.hidden, num_layers=args.layers, **kw),
                          nn.Linear(args.hidden, len(vocab), **kw))
    opt = optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.perf_counter()
    bar = Progress(args.steps, "training")
    stream = batches(train, args.steps, args.batch, args.length, rng)
    for _ in bar:
        x, y = next(stream)
        loss, grad = nn.cross_entropy(model(x), y)
        opt.zero_grad()
        model.backward(grad)
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.status = f"loss {loss / math.log(2):.2f} bits/char"
    elapsed = time.perf_counter() - t0
    bpc = bits_per_char(model, held_out, args.length, 64)
    print(f"held-out: {bpc:.3f} bits per character (uniform guessing: "
          f"{math.log2(len(vocab)):.2f}); {args.steps} steps in {elapsed:.1f} s on the "
          f"{backend_name(args.backend)} backend")
    print("sample:\n" + sample(model, vocab, "The ", args.sample, 0.8, rng))
    return bpc


if __name__ == "__main__":
    main()
