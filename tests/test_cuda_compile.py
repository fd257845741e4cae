"""Every CUDA source compiles with nvcc for sm_80 and sm_90 (CI has nvcc but no GPU), with
every specialisation the gpu backend launches instantiated (kernels/cuda/instantiate.cu)."""

import glob
import os
import re
import shutil
import subprocess

import pytest

CUDA_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "kernels", "cuda")
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


def _names():
    from fastrnn.kernels.cuda import names  # CuPy-free
    return names



@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", sorted(os.path.basename(p) for p in
                                          glob.glob(os.path.join(CUDA_DIR, "*.cu"))))
def test_compiles(source, arch, tmp_path):
    ptx = tmp_path / "out.ptx"
    result = subprocess.run([NVCC, "-std=c++17", f"-arch={arch}", "-I", CUDA_DIR,
                             "--ptx", "-o", str(ptx), os.path.join(CUDA_DIR, source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    if source == "instantiate.cu":
        entries = re.findall(r"\.entry\s+(\S+)\(", ptx.read_text())
        from fastrnn.kernels.cells import CELLS
        assert len(entries) == 2 * len(CELLS) * (4 + 2)  # dtypes x cells x (fwd + bwd)


def test_launcher_names_are_exactly_the_instantiated_kernels(tmp_path):
    """The names CuPy compiles and launches are the kernels instantiate.cu checks."""
    names = _names()
    filt = shutil.which("c++filt")
    if filt is None:
        pytest.skip("c++filt is not installed")
    ptx = tmp_path / "all.ptx"
    subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", "-I", CUDA_DIR, "--ptx", "-o",
                    str(ptx), os.path.join(CUDA_DIR, "instantiate.cu")], check=True,
                   capture_output=True, timeout=300)
    mangled = re.findall(r"\.entry\s+(\S+)\(", ptx.read_text())
    demangled = subprocess.run([filt], input="\n".join(mangled), capture_output=True,
                               text=True, check=True).stdout.split("\n")
    compiled = {d.split("(")[0].removeprefix("void ") for d in demangled if d}
    assert compiled == set(names.all_names())


@pytest.mark.parametrize("macro,fields", [("RNN_FORWARD_PARAMS", "ForwardArgs"),
                                          ("RNN_BACKWARD_PARAMS", "BackwardArgs")])
def test_launch_arguments_name_the_kernels_parameters_in_order(macro, fields):
    """contract.py builds each launch's arguments by name; the names and their order are
    rnn.cu's parameter lists (one list per kernel, which instantiate.cu uses too)."""
    from fastrnn.kernels.cuda import contract
    source = open(os.path.join(CUDA_DIR, "rnn.cu")).read()
    body = source.split(f"#define {macro}(T)", 1)[1].split("\n\n", 1)[0]
    body = re.sub(r"/\*.*?\*/", " ", body.replace("\\\n", " "), flags=re.S)
    params = [p.strip().split()[-1].lstrip("*") for p in body.split(",")]
    assert params == list(getattr(contract, fields)._fields)
