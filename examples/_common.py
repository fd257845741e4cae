"""Shared by the examples: a progress bar, the backend flag, and a timer line."""

import argparse
import sys
import time

import numpy as np

import fastrnn


class Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written, and each option's default."""


def parser(doc):
    p = argparse.ArgumentParser(description=doc, formatter_class=Help)
    p.add_argument("--backend", default=None,
                   help="numpy, cpu, gpu or auto; unset: fastrnn's own selection")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and weights")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny, fast run that checks the example works (CI runs this)")
    return p


def backend_name(backend):
    xp = np if backend != "gpu" else __import__("cupy")
    return fastrnn.dispatch.resolve(backend, xp)[0]


class Progress:
    """``for step in Progress(n, "training"):`` with a bar and a live status on stderr."""

    def __init__(self, total, label):
        self.total, self.label, self.status = total, label, ""
        self.start = time.perf_counter()

    def __iter__(self):
        tty = sys.stderr.isatty()
        for k in range(self.total):
            yield k
            # (redrawn in place on a terminal; a file or a pipe gets a line every tenth)
            if tty or (k + 1) * 10 // self.total != k * 10 // self.total:
                self._draw(k + 1, tty)
        if tty:
            sys.stderr.write("\n")

    def _draw(self, done, tty):
        width = 30
        filled = width * done // self.total
        elapsed = time.perf_counter() - self.start
        start, end = ("\r", "") if tty else ("", "\n")
        sys.stderr.write(f"{start}{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{self.total} {elapsed:5.1f}s {self.status}{end}")
        sys.stderr.flush()
