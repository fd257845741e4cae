"""Word-level language model in plain PyTorch, with fastrnn as a one-import swap.

A classic PyTorch training script: an embedding, a 2-layer LSTM whose hidden state is
carried (and detached) across consecutive batches of one long token stream, a tied-size
decoder, cross-entropy, gradient clipping, SGD with the learning rate cut when validation
stops improving, the best model saved with ``torch.save`` and reloaded for the test. The
only line that differs between the two runs is where ``LSTM`` comes from:

    python examples/word_lm_torch.py              # torch.nn.LSTM
    python examples/word_lm_torch.py --fastrnn    # fastrnn.torch.LSTM

(The two runs agree up to the dropout masks between the LSTM's layers: fastrnn draws them
from torch's generator, but not in the same order as torch's kernel.)

Corpus: the documentation strings of Python's standard library (words and punctuation),
split 80/10/10 into train, validation and test. Reports validation and test perplexity.
"""

import argparse
import math
import os
import tempfile
import time

import torch

from char_lm import stdlib_docstrings



class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and each option's default."""


args = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
args.add_argument("--fastrnn", action="store_true", help="use fastrnn.torch.LSTM")
args.add_argument("--epochs", type=int, default=3, help="passes over the training text")
args.add_argument("--hidden", type=int, default=256, help="LSTM units per layer")
args.add_argument("--bptt", type=int, default=35, help="steps per truncated backpropagation")
args.add_argument("--batch", type=int, default=20, help="parallel streams of text")
args.add_argument("--lr", type=float, default=20.0, help="SGD learning rate (divided by 4 "
                  "when the validation loss stops falling)")
args.add_argument("--clip", type=float, default=0.25, help="gradient norm clipping")
args.add_argument("--seed", type=int, default=0, help="torch's random seed")
args.add_argument("--smoke", action="store_true", help="a tiny run (CI runs this)")
args = args.parse_args()

if args.fastrnn:
    from fastrnn.torch import LSTM  # the one changed line
else:
    from torch.nn import LSTM

torch.manual_seed(args.seed)


def tokenize(text, vocab):
    words = text.replace("\n", " <eos> ").replace(".", " . ").replace(",", " , ").split()
    return torch.tensor([vocab.setdefault(w, len(vocab)) for w in words], dtype=torch.long)


def batchify(data, bsz):
    n = data.size(0) // bsz
    return data[:n * bsz].view(bsz, n).t().contiguous()  # [T, B]


class RNNModel(torch.nn.Module):
    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.2):
        super().__init__()
        self.drop = torch.nn.Dropout(dropout)
        self.encoder = torch.nn.Embedding(ntoken, ninp)
        self.rnn = LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = torch.nn.Linear(nhid, ntoken)
        self.nlayers, self.nhid = nlayers, nhid

    def forward(self, tokens, hidden):
        emb = self.drop(self.encoder(tokens))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid),
                weight.new_zeros(self.nlayers, bsz, self.nhid))


def repackage(h):
    return tuple(v.detach() for v in h)


def evaluate(model, data, bsz):
    model.eval()
    total, hidden = 0.0, model.init_hidden(bsz)
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, args.bptt):
            seq = min(args.bptt, data.size(0) - 1 - i)
            out, hidden = model(data[i:i + seq], hidden)
            total += seq * torch.nn.functional.cross_entropy(
                out, data[i + 1:i + 1 + seq].reshape(-1)).item()
    return total / (data.size(0) - 1)


def main():
    text = stdlib_docstrings()
    if args.smoke:
        text, args.epochs, args.hidden = text[:60_000], 1, 32
    cut1, cut2 = int(len(text) * 0.8), int(len(text) * 0.9)
    vocab = {}
    train = batchify(tokenize(text[:cut1], vocab), args.batch)
    val = batchify(tokenize(text[cut1:cut2], vocab), 10)
    test = batchify(tokenize(text[cut2:], vocab), 10)
    model = RNNModel(len(vocab), 128 if not args.smoke else 16, args.hidden, 2)
    print(f"{type(model.rnn).__module__}.LSTM, vocabulary {len(vocab)}, "
          f"{train.numel()} training tokens")
    lr, best = args.lr, None
    folder = tempfile.TemporaryDirectory()  # (removed with the best weights at the end)
    path = os.path.join(folder.name, "best.pt")
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        hidden = model.init_hidden(args.batch)
        for i in range(0, train.size(0) - 1, args.bptt):
            seq = min(args.bptt, train.size(0) - 1 - i)
            hidden = repackage(hidden)
            model.zero_grad()
            out, hidden = model(train[i:i + seq], hidden)
            loss = torch.nn.functional.cross_entropy(out, train[i + 1:i + 1 + seq].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
        val_loss = evaluate(model, val, 10)
        print(f"epoch {epoch + 1}: validation perplexity {math.exp(val_loss):.1f} "
              f"({time.perf_counter() - start:.1f} s)")
        if best is None or val_loss < best:
            torch.save(model.state_dict(), path)
            best = val_loss
        else:
            lr /= 4.0
    model.load_state_dict(torch.load(path))
    folder.cleanup()
    print(f"test perplexity {math.exp(evaluate(model, test, 10)):.1f} "
          f"(uniform: {len(vocab)}), training {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
