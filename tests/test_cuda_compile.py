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


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", sorted(os.path.basename(p) for p in
                                          glob.glob(os.path.join(CUDA_DIR, "*.cu"))))
def test_compiles(source, arch, tmp_path):
    ptx = tmp_path / "out.ptx"
    result = subprocess.run([NVCC, "-std=c++17", f"-arch={arch}", "-I", CUDA_DIR, "--ptx",
                             "-o", str(ptx), os.path.join(CUDA_DIR, source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    if source == "instantiate.cu":
        entries = re.findall(r"\.entry\s+(\S+)\(", ptx.read_text())
        assert len(entries) == 2 * 5 * (4 + 2)  # dtypes x cells x (forward + backward)


def test_launcher_names_every_instantiated_kernel():
    """The launcher's name expressions and instantiate.cu list the same specialisations."""
    with open(os.path.join(CUDA_DIR, "__init__.py")) as f:
        launcher = f.read()
    assert 'for cell in range(5)' in launcher and '("true", "false")' in launcher
    with open(os.path.join(CUDA_DIR, "instantiate.cu")) as f:
        inst = f.read()
    assert inst.count("rnn_forward<T, CELL,") == 4 and inst.count("rnn_backward<T, CELL,") == 2
