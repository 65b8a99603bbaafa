"""Shared fixtures: small data written to temporary folders, and the optional real data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsynth.common.config.sections import GeneratedDataConfig, PreprocessConfig, SplitConfig
from fedsynth.common.data.generated import generate_table
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.preprocess import preprocess
from fedsynth.common.data.split import Split, split_users


def pytest_configure(config: pytest.Config) -> None:
    """One torch (OpenMP) thread in the test process, unless ``OMP_NUM_THREADS`` says otherwise.

    The tests' tensors are small: a second thread buys nothing, and on a shared 2-core machine its
    OpenMP workers spin-wait between every small operation for a core someone else holds. Measured
    with the load of another test run beside it: 300 full-batch Mult-VAE steps on 150 × 393
    (tests/test_audit.py) took 26 s of CPU on 2 threads, 10 s with ``GOMP_SPINCOUNT=10000`` and
    1.8 s on 1 thread. Processes the tests start (Flower's) keep their own settings.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


DEPLOYMENT_TESTS = ("test_deployment.py", "test_separate_hosts.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n``, ``--dist loadgroup``): the slow Flower simulations in one group, run one at
    a time (each starts a Ray cluster sized to the machine); the deployments over real processes
    (tests/test_deployment.py, tests/test_separate_hosts.py: their own SuperLink ports, mostly waiting on
    heartbeats and timeouts) in another; the fast tests spread over the workers."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            group = "deployment" if item.path.name in DEPLOYMENT_TESTS else "flower"
            item.add_marker(pytest.mark.xdist_group(group))


def shared_data_dir() -> Path:
    """``$FEDSYNTH_SHARED_DATA`` or ``../shared/data`` beside the checkout (absent on a user's clone)."""
    if os.environ.get("FEDSYNTH_SHARED_DATA"):
        return Path(os.environ["FEDSYNTH_SHARED_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def flower_task_identity() -> Iterator[None]:
    """Flower's Message needs the process's run id (set by the ServerApp runtime, here by hand)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture
def real_data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def small_interactions() -> Interactions:
    """A small generated dataset: 300 users × 400 items."""
    table = generate_table(GeneratedDataConfig(num_users=300, num_items=400, mean_history=40, min_history=10, seed=3))
    return preprocess(table, PreprocessConfig())


@pytest.fixture(scope="session")
def small_split(small_interactions: Interactions) -> Split:
    return split_users(small_interactions, SplitConfig(seed=1))


def write(path: Path, text: str, newline: str = "\n") -> Path:
    """Write ``text`` (lines joined by ``newline``) to ``path``, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())
    return path
