"""Sequence classification (many-to-one): a bidirectional LSTM reads scikit-learn's 8x8
handwritten digits row by row (8 steps of 8 pixels) and names the digit, from both
directions' final states. Variable lengths: in training every image is cut after a random
5 to 8 rows (the batch is padded, the layer runs each sequence to its own length), and the
test reports accuracy on whole images and on images cut after 6 rows.

    python examples/classify_digits.py
"""

import time

import numpy as np

import fastrnn
from fastrnn import nn, optim

from _common import Progress, backend_name, parser


def load_digits():
    """Rows as time steps ``[8, N, 8]`` and the labels."""
    from sklearn.datasets import load_digits as sk_load
    d = sk_load()
    images = (d.images / 16.0).astype(np.float32)  # [N, 8, 8]
    return images.transpose(1, 0, 2).copy(), d.target


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--hidden", type=int, default=64, help="LSTM units per direction")
    p.add_argument("--epochs", type=int, default=25, help="passes over the training images")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate")
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.hidden = 2, 16

    x, labels = load_digits()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(labels))
    test, train = order[:360], order[360:]
    print(f"digits: {len(train)} training and {len(test)} test images, 8 rows of 8 pixels")

    kw = dict(backend=args.backend, seed=args.seed)
    model = nn.Sequential(fastrnn.LSTM(8, args.hidden, bidirectional=True, **kw),
                          nn.LastStep(directions=2),
                          nn.Dropout(0.2, seed=args.seed),
                          nn.Linear(2 * args.hidden, 10, **kw))
    opt = optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    t0 = time.perf_counter()
    bar = Progress(args.epochs, "training")
    for _ in bar:
        model.train()
        shuffled = rng.permutation(train)
        for k in range(0, len(shuffled), args.batch):
            b = shuffled[k:k + args.batch]
            lengths = rng.integers(5, 9, len(b))  # each image cut after 5 to 8 rows
            loss, grad = nn.cross_entropy(model(x[:, b], lengths), labels[b])
            opt.zero_grad()
            model.backward(grad)
            optim.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
        bar.status = f"loss {loss:.3f}"
    elapsed = time.perf_counter() - t0
    model.eval()
    whole = float((model(x[:, test]).argmax(axis=1) == labels[test]).mean())
    cut = np.full(len(test), 6)
    partial = float((model(x[:, test], cut).argmax(axis=1) == labels[test]).mean())
    print(f"test accuracy on {len(test)} images: {whole:.1%} whole, {partial:.1%} from the "
          f"first 6 rows; trained in {elapsed:.1f} s on the {backend_name(args.backend)} "
          "backend")
    return whole, partial


if __name__ == "__main__":
    main()
