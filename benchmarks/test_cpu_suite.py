"""The CPU suite (C1-C8): every available contender, one benchmark group per configuration."""

import pytest

from conftest import configs, contender_params, run_benchmark


@pytest.mark.parametrize("name", contender_params("cpu"))
@pytest.mark.parametrize("config", configs("cpu"), ids=lambda c: c.name)
def test_cpu_suite(benchmark, config, name):
    run_benchmark(benchmark, "cpu", config, name)
