"""The GPU suite (G1-G8): skipped where no GPU backend or CUDA PyTorch is available."""

import pytest

from conftest import configs, contender_params, run_benchmark


@pytest.mark.parametrize("name", contender_params("gpu"))
@pytest.mark.parametrize("config", configs("gpu"), ids=lambda c: c.name)
def test_gpu_suite(benchmark, config, name):
    run_benchmark(benchmark, "gpu", config, name)
