"""Deployment helpers: certificates with the right SANs, node keys Flower can read, per-node data files."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from flwr.app import RecordDict

from fedsynth.common.config.run import RunConfig
from fedsynth.common.data.node_file import split_node_file
from fedsynth.common.errors import FedsynthError
from fedsynth.common.federated.round_log import NodeProblem, RoundLog
from fedsynth.server.aggregation import ClientReply, client_participation, with_silent
from fedsynth.simulations.deployment import local
from fedsynth.simulations.deployment.local import (
    LocalDeployment,
    NodeSettings,
    deployment_run_config,
    node_threads,
    thread_share,
)
from fedsynth.simulations.deployment.setup import make_certificates, make_node_keys, split_data


def test_certificates_are_signed_by_the_ca_for_every_host(tmp_path: Path) -> None:
    paths = make_certificates(tmp_path, ["superlink.example.org", "10.0.0.7", "127.0.0.1"])

    ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert paths.server_key.stat().st_mode & 0o077 == 0  # private keys are not readable by others
    with pytest.raises(FedsynthError, match="refusing to overwrite"):
        make_certificates(tmp_path, ["localhost"])


def test_node_keys_are_p384_openssh_pairs(tmp_path: Path) -> None:
    (key,) = make_node_keys(tmp_path, ["node-0"])

    private = load_ssh_private_key(key.private.read_bytes(), None)  # what flower-supernode does
    public = load_ssh_public_key(key.public.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    assert public == private.public_key()


def test_split_data_gives_disjoint_users_and_one_catalogue(tmp_path: Path) -> None:
    settings = RunConfig(gen_users=200, gen_items=300).data()

    files = split_data(settings, 3, tmp_path, seed=0)

    frames = [pd.read_csv(p) for p in files.data]
    users = [set(f["user"]) for f in frames]
    assert not (users[0] & users[1]) and not (users[0] & users[2]) and not (users[1] & users[2])
    assert sum(len(u) for u in users) == 200 and min(len(u) for u in users) > 50
    catalogue = files.catalogue.read_text().split()
    assert set(pd.concat(frames)["item"].astype(str)) <= set(catalogue)
    interactions, split = split_node_file(files.data[0], files.catalogue, seed=0)  # what a node does
    assert interactions.num_items == len(catalogue) and split.train.shape[0] > 0


def test_silent_nodes_count_as_failed_and_missing_nodes_are_listed() -> None:
    answered = ClientReply(8, RecordDict())
    replies = with_silent([answered], expected=[7, 8, 9], timeout=60)

    assert replies == [
        answered,
        ClientReply(7, None, "no reply within 60 s (node offline or too slow)"),
        ClientReply(9, None, "no reply within 60 s (node offline or too slow)"),
    ]
    logs = [RoundLog(0, trained=[7, 8, 9]), RoundLog(1, trained=[7, 8], failed=[NodeProblem(9, "no reply")])]
    participation = client_participation(logs, connected=[7, 8])
    assert participation["missing"] == [9] and participation["participants"] == [7, 8, 9]
    assert participation["failures"] == [{"round": 1, "node": 9, "reason": "no reply"}]


def test_deployment_run_config_keeps_data_off_the_server(tmp_path: Path) -> None:
    settings = deployment_run_config({"ledger-dir": "/x", "min-clients": 5, "epsilon": 4.0}, tmp_path, nodes=3)

    assert settings["simulation-reference"] is False and "ledger-dir" not in settings
    assert settings["min-clients"] == 3 and settings["out-dir"] == str(tmp_path.resolve())


def test_nodes_on_one_machine_split_its_cores_unless_the_user_set_the_threads() -> None:
    assert [thread_share(nodes, cores=2) for nodes in (1, 2, 3, 100)] == [2, 1, 1, 1]
    assert thread_share(4, cores=16) == 4
    assert node_threads(3, {}) == {"OMP_NUM_THREADS": "3"}
    assert node_threads(3, {"OMP_NUM_THREADS": "8"}) == {}, "a value the user set is the user's"
    assert node_threads(None, {}) == {}


@pytest.mark.parametrize("persistent", [True, False])
def test_the_superlink_keeps_its_state_in_the_database_only_when_persistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, persistent: bool
) -> None:
    """In memory, the message objects stay out of SQLite (4-5 s per round at 20 MB messages, docs/scale.md); the
    nodes get their thread share in their environment."""
    started: dict[str, tuple[list[str], dict[str, str] | None]] = {}

    def record(self: LocalDeployment, name: str, command: list[str], extra_env: dict[str, str] | None = None) -> None:
        started[name] = (command, extra_env)

    monkeypatch.setattr(LocalDeployment, "_start", record)
    monkeypatch.setattr(LocalDeployment, "wait_for", staticmethod(lambda *args, **kwargs: None))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    certificates = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    (key,) = make_node_keys(tmp_path / "keys", ["node-0"])
    data = split_data(RunConfig(gen_users=60, gen_items=300).data(), 1, tmp_path / "data", seed=0)
    deployment = LocalDeployment(
        tmp_path / "deployment", certificates, data, persistent_superlink=persistent, threads_per_node=2
    )
    deployment.start_superlink()
    deployment.start_supernode(0, key)

    command, _ = started["superlink"]
    assert ("--database" in command) is persistent
    if persistent:
        assert command[command.index("--database") + 1] == str(deployment.database.resolve())
    assert started["node-0"][1] == {"OMP_NUM_THREADS": "2"}


def test_processes_run_in_their_namespaces_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default: the SuperLink on 127.0.0.1 (no ``--host``), no prefix, nodes give up after 3 tries / 30 s. With a host
    and prefixes (simulations/deployment/netns.py) the SuperLink binds that host, the nodes dial it, each process
    starts behind its own prefix; NodeSettings can lift the reconnection limits."""
    started: list[list[str]] = []

    def popen(command: list[str], **kwargs: object) -> mock.Mock:
        started.append(command)
        return mock.Mock(pid=0)

    monkeypatch.setattr(local.subprocess, "Popen", popen)
    monkeypatch.setattr(LocalDeployment, "wait_for", staticmethod(lambda *args, **kwargs: None))
    certificates = make_certificates(tmp_path / "certs", ["127.0.0.1"])
    (key,) = make_node_keys(tmp_path / "keys", ["node-0"])
    data = split_data(RunConfig(gen_users=60, gen_items=300).data(), 1, tmp_path / "data", seed=0)

    plain = LocalDeployment(tmp_path / "plain", certificates, data)
    plain.start_superlink()
    plain.start_supernode(0, key)
    superlink, node = started
    assert Path(superlink[0]).name == "flower-superlink" and "--host" not in superlink
    assert node[node.index("--superlink") + 1] == f"127.0.0.1:{plain.port}"
    assert node[-4:] == ["--max-retries", "3", "--max-wait-time", "30"]

    started.clear()
    prefixes = {"superlink": ["ip", "netns", "exec", "ns-link"], "node-0": ["ip", "netns", "exec", "ns-node0"]}
    placed = LocalDeployment(tmp_path / "placed", certificates, data, host="10.9.8.2", command_prefixes=prefixes)
    placed.start_superlink()
    placed.start_supernode(0, key, node_settings=NodeSettings(max_retries=None, max_wait_time=300.0))
    superlink, node = started
    assert superlink[:4] == prefixes["superlink"] and superlink[superlink.index("--host") + 1] == "10.9.8.2"
    assert node[:4] == prefixes["node-0"] and node[node.index("--superlink") + 1] == f"10.9.8.2:{placed.port}"
    assert "--max-retries" not in node and node[-2:] == ["--max-wait-time", "300"]
    assert f'address = "10.9.8.2:{placed.port}"' in (placed.flwr_home / "config.toml").read_text()
