"""fedsynth.client.warm_node: the SuperNode launcher whose ClientApp tasks are forks of a warm process.

The deployment tests (tests/test_deployment.py, slow) run whole deployments through it; these
check its parts: the command line each task gets is Flower's own, tasks are forked and reaped,
and bad arguments are refused before any process starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor import subprocess_executor
from flwr.supercore.superexec.executor.types import ExecutionSpec

from fedsynth.client import warm_node


def spec(task_type: TaskType = TaskType.CLIENT_APP, **changes: Any) -> ExecutionSpec:
    fields: dict[str, Any] = {
        "task_type": task_type,
        "runtime_api_address": "127.0.0.1:9094",
        "token": "secret-token",
        "insecure": True,
        "root_certificates_path": None,
        "runtime_dependency_install": False,
        "parent_pid": 4242,
        "suppress_output": False,
        "task_id": 7,
    }
    return ExecutionSpec(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"insecure": False, "root_certificates_path": "/ca.pem"},
        {"parent_pid": None},
        {"runtime_dependency_install": True},
    ],
)
def test_a_forked_task_gets_the_command_line_flowers_own_executor_would_run(
    changes: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **_: started.append(list(args)))
    subprocess_executor.SubprocessExecutor().launch(spec(**changes))
    assert warm_node.clientapp_argv(spec(**changes)) == started[0]


def test_client_app_tasks_are_forked_and_reaped_other_tasks_are_flowers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def child(task: ExecutionSpec) -> None:
        (tmp_path / f"ran-{task.task_id}-{os.getpid()}").write_text(task.token)
        os._exit(0)

    monkeypatch.setattr(warm_node, "_run_forked_clientapp", child)
    executor = warm_node.ForkingExecutor()
    assert executor.launch(spec(task_id=3)).status == "accepted"
    assert executor.launch(spec(task_id=4)).status == "accepted"
    assert len(executor.children) == 2
    deadline = time.monotonic() + 30
    while executor.children and time.monotonic() < deadline:
        executor.reconcile()
        time.sleep(0.02)
    assert not executor.children
    ran = sorted(p.name.split("-")[1] for p in tmp_path.iterdir())
    assert ran == ["3", "4"] and all(p.read_text() == "secret-token" for p in tmp_path.iterdir())
    assert all(int(p.name.split("-")[2]) != os.getpid() for p in tmp_path.iterdir())

    started: list[list[str]] = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **_: started.append(list(args)))
    executor.launch(spec(TaskType.SERVER_APP))
    assert started and started[0][0] == "flwr-serverapp"


def test_the_runtime_address_comes_from_host_and_port() -> None:
    assert warm_node.runtime_address(["--superlink", "x:9092"]) == "127.0.0.1:9094"
    assert warm_node.runtime_address(["--port", "5000"]) == "127.0.0.1:5000"
    assert warm_node.runtime_address(["--host=0.0.0.0", "--port=5001"]) == "127.0.0.1:5001"
    assert warm_node.runtime_address(["--host", "10.0.0.2", "--port", "5002"]) == "10.0.0.2:5002"


@pytest.mark.parametrize(
    "refused", [["--isolation", "subprocess"], ["--isolation=process"], ["--ssl-certfile", "c.pem"]]
)
def test_arguments_it_cannot_honour_are_refused_before_anything_starts(
    refused: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(warm_node.subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit, match=f"does not take {refused[0].partition('=')[0]}"):
        warm_node.main(["--superlink", "127.0.0.1:9092", *refused])
    assert not started


def test_the_launcher_exits_with_the_supernodes_status_when_the_supernode_gives_up(tmp_path: Path) -> None:
    """A SuperNode that cannot connect exits; its launcher must not linger as a SuperExec without a node."""
    import subprocess
    import sys

    script = (
        "import subprocess, sys, threading, time\n"
        "from fedsynth.client.warm_node import exit_with\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.exit(3)'])\n"
        "threading.Thread(target=exit_with, args=(child,), daemon=True).start()\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], timeout=60)
    assert done.returncode == 3 and time.monotonic() - started < 30


def test_flowers_supernode_loop_sleeps_where_the_fast_supernode_shortens_it() -> None:
    import inspect
    import time

    from flwr.supernode import start_client_internal

    source = inspect.getsource(start_client_internal)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source  # the idle pull and the reply wait
    assert start_client_internal.time is time  # looked up on the module at call time: replaceable


def test_short_sleeps_cap_every_sleep_and_leave_the_rest_of_time_alone(monkeypatch) -> None:
    import time

    from fedsynth.client.fast_supernode import IDLE_POLL_SECONDS, ShortSleeps

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    ShortSleeps().sleep(3)
    ShortSleeps().sleep(0.05)
    assert slept == [IDLE_POLL_SECONDS, 0.05]
    assert ShortSleeps().monotonic is time.monotonic


def test_clientapps_and_the_serverapp_retry_their_object_pulls_quickly() -> None:
    import inspect

    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid
    from flwr.supernode.runtime import run_clientapp

    from fedsynth.common.runtime.object_pulls import OBJECT_PULL_BACKOFF, shorten_object_pull_backoff

    pull, inner = inflatable_utils.pull_and_inflate_object_from_tree, inflatable_utils.pull_objects
    before, inner_before = dict(pull.__kwdefaults__ or {}), dict(inner.__kwdefaults__ or {})
    try:
        shorten_object_pull_backoff()
        assert {k: pull.__kwdefaults__[k] for k in OBJECT_PULL_BACKOFF} == OBJECT_PULL_BACKOFF
        assert run_clientapp.pull_and_inflate_object_from_tree is pull  # the same function object
        assert "initial_backoff" not in inspect.getsource(run_clientapp)  # its call uses the defaults
        assert {k: inner.__kwdefaults__[k] for k in OBJECT_PULL_BACKOFF} == OBJECT_PULL_BACKOFF
        assert http_grid.pull_objects is inner  # the deployed ServerApp's grid pulls the replies with it
        assert "initial_backoff" not in inspect.getsource(http_grid)
    finally:
        pull.__kwdefaults__.update(before)
        inner.__kwdefaults__.update(inner_before)
