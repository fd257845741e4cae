"""Each example's --smoke mode runs from the command line and reports its result."""

import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def _run(name, *args):
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                          capture_output=True, text=True, check=True, timeout=300).stdout


def test_char_lm_smoke():
    out = _run("char_lm.py", "--smoke")
    assert "bits per character" in out and "sample:" in out


def test_forecast_smoke(tmp_path):
    pytest.importorskip("statsmodels")
    pytest.importorskip("matplotlib")
    png = tmp_path / "f.png"
    out = _run("forecast_sunspots.py", "--smoke", "--plot", str(png))
    assert "naive last-value" in out and png.stat().st_size > 1000


def test_digits_smoke():
    pytest.importorskip("sklearn")
    out = _run("classify_digits.py", "--smoke")
    assert "test accuracy" in out


@pytest.mark.parametrize("bridge", [[], ["--fastrnn"]], ids=["torch.nn", "fastrnn.torch"])
def test_word_lm_torch_smoke(bridge):
    pytest.importorskip("torch")
    out = _run("word_lm_torch.py", "--smoke", *bridge)
    assert ("fastrnn.torch" in out) == bool(bridge) and "test perplexity" in out


@pytest.mark.parametrize("name", ["char_lm.py", "forecast_sunspots.py", "classify_digits.py",
                                  "quickstart.py", "word_lm_torch.py"])
def test_help(name):
    assert "usage:" in _run(name, "--help")
