"""A real local Ray cluster for the tests of engine/cluster, shared by the whole session.

Ray costs about 10 s and 1.8 GB to start, so one cluster (2 CPUs, no dashboard) serves every
test here (``ray_cluster``); the test of a clean shutdown (last in test_ray.py) stops it and
starts its own. Without Ray installed the tests skip, except under CI (``CI`` set), where
they fail: .ci/run installs the ``[ray]`` extra, so CI can never pass by skipping them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def ray() -> ModuleType:
    """The ray module (skip, or fail under CI, without it)."""
    if importlib.util.find_spec("ray") is None:
        if _in_ci():
            pytest.fail("ray is not installed; CI installs grpo-engine[ray]", pytrace=False)
        pytest.skip("ray is not installed: pip install 'grpo-engine[ray]'")
    import ray as ray_mod

    return ray_mod


@pytest.fixture(scope="session")
def ray_cluster(ray: ModuleType) -> Iterator[ModuleType]:
    """One real single-node Ray cluster (2 CPUs) for the session."""
    from . import workloads

    ray.cloudpickle.register_pickle_by_value(workloads)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    yield ray
    ray.shutdown()
