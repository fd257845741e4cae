"""The installed ``fastrnn`` command and the installed package layout."""

import subprocess
import sys

import fastrnn


def test_info_lists_versions_and_backends():
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True,
                         capture_output=True, text=True).stdout
    assert f"fastrnn {fastrnn.__version__}" in out
    for name, rep in fastrnn.backends().items():
        line = next(l for l in out.splitlines() if l.startswith(f"  {name} "))
        assert ("available" in line) and (rep["available"] or rep["reason"] in line)


def test_kernels_are_the_fastrnn_kernels_subpackage():
    import fastrnn.kernels.reference as ref
    assert ref.__name__ == "fastrnn.kernels.reference"
