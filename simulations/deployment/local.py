"""A real Flower deployment on one machine: a SuperLink and N SuperNodes as separate processes.

``fedsynth deploy local`` uses it to try the whole deployment (TLS, node authentication,
per-node data files and ledgers) before renting machines; the deployment tests use it to prove
fault tolerance over real processes (with a persistent SuperLink database, restarted on the same
file). Each process is started in its own process group and every one is stopped on exit, even
after a failure.

Two settings exist because every process shares one machine here:

- ``persistent_superlink``: ``--database superlink/state.db`` (registrations and runs survive a
  SuperLink restart) or Flower's default in-memory state. The database also holds every
  message's objects: with SQLite that costs about 4–5 s per round at the Mult-VAE + GAN bundle
  of 1,682 items (5 MB per message; docs/scale.md). ``fedsynth deploy local`` starts a
  fresh SuperLink per trial anyway, so it uses the in-memory state.
- ``threads_per_node``: ``OMP_NUM_THREADS`` for each SuperNode (and the ClientApps it starts), so
  that N nodes on C cores use C/N threads each, as Flower's simulation gives each virtual node
  one CPU; without it every node starts C threads and they contend (measured: 2.7–3.3 s per DP-SGD
  round instead of about 2 s with 3 nodes on 2 cores). A value the user set in
  ``OMP_NUM_THREADS`` is kept.

Layout under ``root``: ``certs/``, ``keys/``, ``flwr_home/config.toml`` (the ``fedsynth-link``
connection for ``flwr``), ``superlink/state.db`` (when persistent), ``nodes/node-K/ledgers``,
``logs/*.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.simulations.deployment.setup import Certificates, NodeFiles, NodeKey
from fedsynth.simulations.runner import (
    check_outcome,
    final_status,
    flower_environment,
    format_run_config,
    free_port,
    project_root,
    started_run_id,
)

# The wall-clock safety net of `fedsynth deploy local`'s run: a silent node is caught much sooner by
# reply-timeout; 20 SuperNodes sharing 2 cores need about 20 minutes (docs/scale.md), 900 s cut them off.
DEPLOYED_RUN_LIMIT = 4 * 3600.0

# Not the name of any folder the `flwr` commands run in (a folder of that name would be read as an app).
CONNECTION = "fedsynth-link"


def thread_share(nodes: int, cores: int | None = None) -> int:
    """Threads per node when ``nodes`` SuperNodes share this machine's ``cores`` (default: this process's CPUs)."""
    available = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, available // max(1, nodes))


def node_threads(threads: int | None, environment: Mapping[str, str]) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for a SuperNode: ``threads``, unless None or the user set ``OMP_NUM_THREADS``."""
    if threads is None or "OMP_NUM_THREADS" in environment:
        return {}
    return {"OMP_NUM_THREADS": str(threads)}


def _binary(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass
class Process:
    """A started process (its own process group) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to the whole group, SIGKILL after ``timeout`` seconds."""
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


@dataclass(frozen=True)
class NodeSettings:
    """What a trial SuperNode is started with besides its index: its cap and, to try errors, another data file."""

    max_epsilon: float | None = None  # node config max-epsilon: the silo's lifetime budget
    signed_secagg: bool = True  # node config secagg-signing-key + secagg-trusted-keys (when it has a key)
    data_path: Path | None = None  # default: the node's own file from split_data
    # How long the SuperNode keeps reconnecting to a SuperLink it cannot reach before it gives up (None: Flower's
    # default, no limit). 3 tries / 30 s lets refused nodes exit in the tests; a node on its own host whose network
    # may drop for longer needs more (tests/test_separate_hosts.py).
    max_retries: int | None = 3
    max_wait_time: float | None = 30.0


@dataclass(frozen=True)
class Submission:
    """A submitted run: `flwr run`'s exit code, the run id, the SuperLink's final status and the log."""

    code: int
    run_id: int | None
    status: str | None
    log: Path

    def completed(self) -> bool:
        return self.status == "finished:completed" and self.code == 0


@dataclass
class LocalDeployment:
    """SuperLink + SuperNodes on 127.0.0.1 with TLS and node authentication (see module docstring); with ``host``
    and ``command_prefixes``, each process in its own network namespace (:mod:`.netns`)."""

    root: Path
    certificates: Certificates
    data: NodeFiles
    port: int = field(default_factory=free_port)
    processes: dict[str, Process] = field(default_factory=dict)
    warm_nodes: bool = True  # SuperNodes through fedsynth-node (warm forked ClientApps); False: plain flower-supernode
    persistent_superlink: bool = True  # --database superlink/state.db; False: Flower's in-memory state
    threads_per_node: int | None = None  # OMP_NUM_THREADS of each SuperNode; None: inherited
    # Separate hosts (simulations/deployment/netns.py): the address the SuperLink binds and the nodes dial (its
    # certificate must name it), and a command prefix per process name (e.g. `ip netns exec NS` for "node-0").
    host: str = "127.0.0.1"
    command_prefixes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr_home"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def node_dir(self, index: int) -> Path:
        return self.root / "nodes" / f"node-{index}"

    def write_connection(self) -> None:
        """``flwr_home/config.toml``: the ``fedsynth-link`` connection (address + CA) used by ``flwr`` commands."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\nroot-certificates = "{self.certificates.ca_certificate.resolve()}"\n'
        )

    def _start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> Process:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                [*self.command_prefixes.get(name, []), *command],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**flower_environment(self.flwr_home), **(extra_env or {})},
                start_new_session=True,
                cwd=self.root,
            )
        process = Process(name, popen, log)
        self.processes[name] = process
        return process

    @property
    def database(self) -> Path:
        """The SuperLink's SQLite state (used when ``persistent_superlink``)."""
        return self.root / "superlink" / "state.db"

    def start_superlink(self) -> Process:
        """TLS, node authentication, the database (when persistent), no run-time dependency installs."""
        self.write_connection()
        self.database.parent.mkdir(parents=True, exist_ok=True)
        certs = self.certificates
        database = ["--database", str(self.database.resolve())] if self.persistent_superlink else []
        process = self._start(
            "superlink",
            [
                _binary("flower-superlink"),
                "--ssl-ca-certfile", str(certs.ca_certificate.resolve()),
                "--ssl-certfile", str(certs.server_certificate.resolve()),
                "--ssl-keyfile", str(certs.server_key.resolve()),
                "--enable-supernode-auth",
                *database,
                *(["--host", self.host] if self.host != "127.0.0.1" else []),  # 127.0.0.1: Flower's default
                "--port", str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )  # fmt: skip
        self.wait_for(lambda: self._port_open(), 60, "the SuperLink to listen", process)
        return process

    def _port_open(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.host, self.port)) == 0

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A ``flwr`` CLI command against this SuperLink's connection."""
        return subprocess.run(
            [_binary("flwr"), *args],
            env=flower_environment(self.flwr_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )

    @property
    def trusted_keys(self) -> Path:
        """The operator's list of registered node public keys, which every node checks SecAgg keys against
        (node config ``secagg-trusted-keys``): one OpenSSH line per :meth:`register`."""
        return self.root / "registered-node-keys.pub"

    def register(self, key: NodeKey) -> int:
        """Register a SuperNode's public key with the SuperLink (and on :attr:`trusted_keys`); its node id."""
        done = self.flwr("supernode", "register", str(key.public.resolve()), CONNECTION, "--format", "json")
        try:
            payload = json.loads(done.stdout[done.stdout.index("{") :])
            node_id = int(payload["node-id"])
        except (ValueError, KeyError) as exc:
            raise FedsynthError(f"registering {key.public} failed: {done.stdout}{done.stderr}") from exc
        with self.trusted_keys.open("ab") as listed:
            listed.write(key.public.read_bytes().strip() + b"\n")
        return node_id

    def registered_nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: the SuperNodes the SuperLink knows (with their status)."""
        done = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        try:
            payload = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError as exc:
            raise FedsynthError(f"flwr supernode list failed: {done.stdout}{done.stderr}") from exc
        return list(payload.get("nodes", []))

    def start_supernode(
        self,
        index: int,
        key: NodeKey | None,
        with_ca: bool = True,
        name: str = "",
        node_settings: NodeSettings | None = None,
    ) -> Process:
        """SuperNode ``index`` with its own data file, catalogue, ledger directory, cap and runtime port.

        ``name`` (default ``node-<index>``) names its process and log.
        """
        settings = node_settings or NodeSettings()
        ledgers = self.node_dir(index) / "ledgers"
        ledgers.mkdir(parents=True, exist_ok=True)
        data_path = settings.data_path or self.data.data[index]
        node_config = (
            f"data-path='{data_path.resolve()}' catalogue-path='{self.data.catalogue.resolve()}' "
            f"ledger-dir='{ledgers.resolve()}'"
        )
        if settings.max_epsilon is not None:
            node_config += f" max-epsilon={settings.max_epsilon!r}"
        if key is not None and settings.signed_secagg:  # its auth key signs its SecAgg keys
            node_config += (
                f" secagg-signing-key='{key.private.resolve()}' secagg-trusted-keys='{self.trusted_keys.resolve()}'"
            )
        launcher = "fedsynth-node" if self.warm_nodes else "flower-supernode"  # client/warm_node.py
        command = [_binary(launcher), "--superlink", self.address, "--port", str(free_port())]
        if with_ca:
            command += ["--root-certificates", str(self.certificates.ca_certificate.resolve())]
        if key is not None:
            command += ["--auth-supernode-private-key", str(key.private.resolve())]
        command += ["--node-config", node_config]
        if settings.max_retries is not None:
            command += ["--max-retries", str(settings.max_retries)]
        if settings.max_wait_time is not None:
            command += ["--max-wait-time", f"{settings.max_wait_time:g}"]
        return self._start(name or f"node-{index}", command, node_threads(self.threads_per_node, os.environ))

    def submit(
        self, run_config: dict[str, Any], on_line: Callable[[str], None] | None = None, timeout: float = 900
    ) -> Submission:
        """``flwr run <project> <connection> --stream`` with ``run_config`` (log in logs/run.log).

        Returns `flwr run`'s exit code with the run's status as the SuperLink reports it: `flwr run`
        exits 0 even when the ServerApp failed, so only the status says how the run ended.
        """
        command = [_binary("flwr"), "run", str(project_root()), CONNECTION, "--stream"]
        command += ["--run-config", format_run_config(run_config)]
        log = self.root / "logs" / "run.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        run_id = None
        with log.open("a") as handle:
            process = subprocess.Popen(
                command,
                env=flower_environment(self.flwr_home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.root,
                start_new_session=True,
            )
            assert process.stdout is not None
            try:
                for line in process.stdout:
                    handle.write(line)
                    handle.flush()
                    run_id = run_id or started_run_id(line)
                    if on_line is not None:
                        on_line(line.rstrip("\n"))
                    if time.monotonic() > deadline:
                        raise FedsynthError(f"the run took longer than {timeout:.0f} s; see {log}.")
                code = process.wait()
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        status = None
        if run_id is not None:
            status = final_status(CONNECTION, run_id, flower_environment(self.flwr_home), cwd=self.root)
        return Submission(code, run_id, status, log)

    @staticmethod
    def wait_for(condition: Callable[[], bool], timeout: float, what: str, process: Process | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if process is not None and not process.alive():
                raise FedsynthError(f"{process.name} exited while waiting for {what}; see {process.log}.")
            if time.monotonic() > deadline:
                raise FedsynthError(f"timed out after {timeout:.0f} s waiting for {what}.")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop every process this deployment started (SuperNodes first, the SuperLink last)."""
        for name in sorted(self.processes, key=lambda n: n == "superlink"):
            self.processes[name].stop()

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prepare_local(root: Path, nodes: int, run_config: dict[str, Any]) -> tuple[Certificates, list[NodeKey], NodeFiles]:
    """Certificates, node keys and node data files under ``root`` (reused when already there)."""
    from fedsynth.common.config.run import RunConfig
    from fedsynth.simulations.deployment.setup import make_certificates, make_node_keys, split_data

    certs_dir, keys_dir = root / "certs", root / "keys"
    if (certs_dir / "ca.crt").is_file():
        certificates = Certificates(
            certs_dir / "ca.crt", certs_dir / "ca.key", certs_dir / "server.pem", certs_dir / "server.key"
        )
    else:
        certificates = make_certificates(certs_dir, ["localhost", "127.0.0.1"])
    names = [f"node-{i}" for i in range(nodes)]
    missing = [n for n in names if not (keys_dir / n).is_file()]
    make_node_keys(keys_dir, missing)
    keys = [NodeKey(keys_dir / n, keys_dir / f"{n}.pub") for n in names]
    config = RunConfig.from_run_config({k: v for k, v in run_config.items() if k != "ledger-dir"})
    data = split_data(config.data(), nodes, root / "data", config.seed)
    return certificates, keys, data


def deployment_run_config(run_config: dict[str, Any], out: Path, nodes: int) -> dict[str, Any]:
    """The run config of a deployment: full pipeline, no server-side data, outputs in ``out``.

    ``ledger-dir`` is dropped: each SuperNode keeps its ledger on its own disk (its node config).
    """
    settings = {k: v for k, v in run_config.items() if k != "ledger-dir"}
    settings.update(
        {
            "pipeline": "full",
            "simulation-reference": False,
            "out-dir": str(out.resolve()),
            "min-clients": min(int(settings.get("min-clients", 2)), nodes),
        }
    )
    return settings


def run_local_deployment(
    console: Any,
    out: Path,
    nodes: int,
    run_config: dict[str, Any],
    node_max_epsilon: float | None = None,
    warm_nodes: bool = True,
    persistent_superlink: bool = False,
) -> dict[str, Any]:
    """``fedsynth deploy local``: prepare, start everything, submit, stream progress, stop everything.

    Each node's cap (node config ``max-epsilon``) is ``node_max_epsilon``, by default the run's ε;
    ``warm_nodes``: SuperNodes through ``fedsynth-node`` (:mod:`fedsynth.client.warm_node`), else plain
    ``flower-supernode``;
    ``persistent_superlink``: the SuperLink keeps its state in ``deploy/superlink/state.db`` (what a real
    deployment may choose; the benchmark's comparison) instead of in memory. The nodes split this machine's
    cores (:func:`thread_share`).
    """
    from fedsynth.simulations.jobs import RunProgress, check_new_run

    check_new_run(out, nodes)
    if run_config.get("attack", "none") != "none" or run_config.get("attack-targets", 0):
        raise ConfigError(
            "--attack and --attack-targets simulate malicious silos in `fedsynth run` only; a deployment's nodes "
            "are real processes with their own data (robust-aggregation works in both)."
        )
    root = out / "deploy"
    old_database = root / "superlink" / "state.db"
    if old_database.exists():
        old_database.unlink()  # a fresh SuperLink per trial; the nodes' ledgers (root/nodes) are kept
    certificates, keys, data = prepare_local(root, nodes, run_config)
    settings = deployment_run_config(run_config, out, nodes)
    cap = node_max_epsilon if node_max_epsilon is not None else float(settings.get("epsilon", 8.0))
    threads = thread_share(nodes)
    with LocalDeployment(
        root,
        certificates,
        data,
        warm_nodes=warm_nodes,
        persistent_superlink=persistent_superlink,
        threads_per_node=threads,
    ) as deployment:
        share = os.environ.get("OMP_NUM_THREADS", str(threads))
        state = f"database {old_database}" if persistent_superlink else "state in memory: a fresh SuperLink per trial"
        console.print(
            f"SuperLink on {deployment.address} (TLS, node authentication, {state}); "
            f"the {nodes} SuperNodes share this machine, OMP_NUM_THREADS={share} each"
        )
        deployment.start_superlink()
        for index, key in enumerate(keys):
            node_id = deployment.register(key)
            deployment.start_supernode(index, key, node_settings=NodeSettings(max_epsilon=cap))
            console.print(f"SuperNode {index}: id {node_id}, data {data.data[index]}, max-epsilon {cap:g}")
        deployment.wait_for(
            lambda: sum(n.get("status") == "online" for n in deployment.registered_nodes()) >= nodes,
            120,
            f"{nodes} SuperNodes to connect",
        )

        started = time.perf_counter()
        rounds = int(settings.get("num-server-rounds", 3))
        with RunProgress(console, rounds, f"deployed run: {nodes} nodes, {rounds} rounds") as progress:
            submission = deployment.submit(settings, on_line=progress, timeout=DEPLOYED_RUN_LIMIT)
        console.print(f"run {submission.run_id} ended as {submission.status} in {time.perf_counter() - started:.0f} s")
    check_outcome(out, submission.code, submission.status, root / "logs" / "run.log")
    if not (out / "metrics.json").is_file():
        raise FedsynthError(f"the deployed run wrote no metrics.json; see {root / 'logs'} (run.log, superlink.log).")
    metrics = dict(json.loads((out / "metrics.json").read_text()))
    console.print(
        f"wrote {out / 'metrics.json'} and {out / 'report.md'}; ε max {metrics['privacy']['epsilon_max']:.3f}"
    )
    return metrics
