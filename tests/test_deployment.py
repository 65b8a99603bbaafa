"""Deployment over real processes on 127.0.0.1: TLS, node authentication, node-side caps, failures, restarts.

One SuperLink (TLS, --enable-supernode-auth, persistent database) and four registered SuperNodes,
each with its own data file, ledger directory and cap (node config max-epsilon = 8); one of them
names a data file that does not exist. A first run stops at the start naming that node, with
nothing spent; with allow-degraded the others run the full pipeline; an unregistered key and a
node without the CA are refused; one node is SIGKILLed after round 1 and the run completes with
the others; the restarted node's ledger holds the ε it had spent; a second run asking ε = 16 is
refused by every node (cap 8) and leaves the ledgers unchanged; a restarted SuperLink still knows
the registered nodes. Every process is stopped at the end, even on failure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from fedsynth.common.config.run import RunConfig
from fedsynth.common.data.node_file import split_node_file
from fedsynth.common.secagg.updates import UPDATE
from fedsynth.simulations.deployment.local import LocalDeployment, NodeSettings, deployment_run_config, thread_share
from fedsynth.simulations.deployment.setup import make_certificates, make_node_keys, split_data

pytestmark = pytest.mark.slow


def ledger_files(deployment: LocalDeployment, nodes: range) -> dict[Path, bytes]:
    return {p: p.read_bytes() for i in nodes for p in (deployment.node_dir(i) / "ledgers").glob("ledger-*.json")}


def test_deployment_over_real_processes(tmp_path: Path) -> None:
    started = time.perf_counter()
    certificates = make_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"])
    keys = make_node_keys(tmp_path / "keys", ["node-0", "node-1", "node-2", "broken", "intruder"])
    data = split_data(RunConfig(gen_users=360, gen_items=300).data(), 3, tmp_path / "data", seed=0)
    base = {
        "num-server-rounds": 2,
        "synthesizers": "vae",
        "recommenders": "ease",
        "synthetic-users": 200,
        "vae-batch-size": 32,
        "gan-batch-size": 32,
        "discriminator-steps": 3,
        "reply-timeout": 180.0,
    }
    out = tmp_path / "out"
    capped = NodeSettings(max_epsilon=8.0)
    deployment = LocalDeployment(tmp_path / "deployment", certificates, data)
    try:
        deployment.start_superlink()
        node_ids = [deployment.register(key) for key in keys[:4]]
        nodes = [deployment.start_supernode(i, key, node_settings=capped) for i, key in enumerate(keys[:3])]
        missing_file = NodeSettings(max_epsilon=8.0, data_path=tmp_path / "data" / "no-such-file.csv")
        deployment.start_supernode(3, keys[3], node_settings=missing_file, name="broken")
        intruder = deployment.start_supernode(0, keys[4], name="intruder")  # a key the SuperLink never registered
        no_ca = deployment.start_supernode(1, keys[0], with_ca=False, name="no-ca")  # TLS without the CA
        deployment.wait_for(
            lambda: sum(n["status"] == "online" for n in deployment.registered_nodes()) == 4, 120, "4 SuperNodes"
        )

        # A node whose data file is missing stops the run at the start, named, before anything is spent.
        stopped = deployment.submit(deployment_run_config(base, tmp_path / "stopped", nodes=4), timeout=300)

        assert stopped.status == "finished:failed" and not stopped.completed()
        reason = json.loads((tmp_path / "stopped" / "failed.json").read_text())["reason"]
        assert f"node {node_ids[3]} refused: node config data-path" in reason and "no such file" in reason
        assert "before spending any budget" in reason
        assert ledger_files(deployment, range(3)) == {}, "nothing may be spent when the run stops at the start"
        assert not (tmp_path / "stopped" / "metrics.json").exists()

        # The operator leaves the broken node out explicitly; node 2 crashes after round 1.
        killed = []

        def kill_after_round_one(line: str) -> None:
            if "fedsynth round 1/2" in line and not killed:
                nodes[2].kill()  # a crash: SIGKILL to the SuperNode and its ClientApp processes
                killed.append(time.perf_counter())

        settings = deployment_run_config({**base, "allow-degraded": True}, out, nodes=3)
        submission = deployment.submit(settings, on_line=kill_after_round_one, timeout=420)

        assert submission.completed(), submission.log.read_text()[-3000:]
        assert killed, "round 1 never finished"
        metrics = json.loads((out / "metrics.json").read_text())
        for name in ("report.md", "synthetic.parquet", "synthetic_meta.json", "train.json", "checkpoints/round-2.pt"):
            assert (out / name).is_file(), name
        assert metrics["clients"]["missing"] == [node_ids[2]]
        report = (out / "report.md").read_text()
        assert f"Missing at the end: {node_ids[2]}" in report
        assert f"| {node_ids[2]} | 0.0000 |" in report and "**missing**" in report  # it spent ε: it is listed
        assert "None" not in report and "not computed" not in report.split("## Clients")[0].split("## Privacy")[1]
        assert metrics["fidelity"] == {}, "the deployed server must not read any data"
        assert "synthetic/ease" in metrics["recommenders"]
        train = json.loads((out / "train.json").read_text())
        assert list(train["excluded"]) == [str(node_ids[3])]
        assert sorted(train["rounds"][0]["trained"]) == sorted(node_ids[:3])
        assert node_ids[2] not in train["rounds"][1]["trained"]
        assert train["epsilon_cap_by_client"] == {str(n): 8.0 for n in node_ids[:3]}
        spent_before_crash = train["rounds"][0]["epsilon_by_node"][str(node_ids[2])]

        # Refused: the unregistered key and the node without the CA never joined and gave up.
        deployment.wait_for(lambda: not intruder.alive() and not no_ca.alive(), 90, "the refused nodes to exit")
        assert {int(n["node-id"]) for n in deployment.registered_nodes()} == set(node_ids)

        # The crashed node restarts on the same data: its ledger (its own disk) holds what it spent.
        restarted = deployment.start_supernode(2, keys[2], node_settings=capped)
        ledgers = list((deployment.node_dir(2) / "ledgers").glob("ledger-*.json"))
        assert len(ledgers) == 1
        ledger = json.loads(ledgers[0].read_text())
        assert ledger["history"][-1]["epsilon_total"] == pytest.approx(spent_before_crash)
        assert ledger["history"][-1]["run_id"] == submission.run_id and ledger["max_epsilon"] == 8.0
        # synthesizers = "vae": the GAN is not trained and spends nothing, so the ledger has no GAN events
        assert {e["model"] for e in ledger["events"]} == {"statistics", "cooccurrence", "vae"}
        deployment.wait_for(
            lambda: any(
                int(n["node-id"]) == node_ids[2] and n["status"] == "online" for n in deployment.registered_nodes()
            ),
            90,
            "the restarted node to reconnect",
            restarted,
        )

        # A second run on the spent nodes, asking for more than their cap: refused by every node, nothing changes.
        before = ledger_files(deployment, range(3))
        asking_more = deployment_run_config({**base, "epsilon": 16.0}, tmp_path / "second", nodes=4)
        second = deployment.submit(asking_more, timeout=300)

        assert second.status == "finished:failed"
        reason = json.loads((tmp_path / "second" / "failed.json").read_text())["reason"]
        for node in node_ids[:3]:
            assert f"node {node} refused: this run (it asks to spend epsilon 16)" in reason
        assert "above this silo's cap 8" in reason
        assert ledger_files(deployment, range(3)) == before, "a refused run must leave every ledger unchanged"

        # A SuperLink restart on the same database keeps the registered nodes.
        deployment.processes["superlink"].stop()
        deployment.start_superlink()
        assert {int(n["node-id"]) for n in deployment.registered_nodes()} == set(node_ids)
    finally:
        deployment.stop()
    assert not any(p.alive() for p in deployment.processes.values())
    print(f"deployment test: {time.perf_counter() - started:.0f} s")


def test_secure_aggregation_over_real_processes_survives_a_node_lost_after_masking(tmp_path: Path) -> None:
    """TLS + node auth, three SuperNodes, secure statistics release and a secure local round; node 2 is
    SIGKILLed as soon as the server says the round's masked updates are in (its unmask answer is then
    seconds away: a fresh ClientApp process per message), so the server must unmask node 2's update from
    the other two nodes' shares. The round's result is the exact FedAvg of all three nodes' updates."""
    certificates = make_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"])
    keys = make_node_keys(tmp_path / "keys", ["node-0", "node-1", "node-2"])
    data = split_data(RunConfig(gen_users=360, gen_items=300).data(), 3, tmp_path / "data", seed=0)
    # reply-timeout 90 s: slack for the survivors' unmask answers on a loaded CI machine; the lost node's request
    # ends sooner, when the SuperLink marks it offline (two missed heartbeats, 60 s)
    settings = {"num-server-rounds": 1, "synthesizers": "vae", "recommenders": "popularity", "vae-batch-size": 32,
                "gan-batch-size": 32, "synthetic-users": 200, "reply-timeout": 90.0, "secure-aggregation": True,
                "allow-degraded": True}  # fmt: skip
    out = tmp_path / "out"
    # As `fedsynth deploy local` runs it: the SuperLink's state in memory, the nodes splitting the cores.
    deployment = LocalDeployment(
        tmp_path / "deployment", certificates, data, persistent_superlink=False, threads_per_node=thread_share(3)
    )
    try:
        deployment.start_superlink()
        node_ids = [deployment.register(key) for key in keys]
        nodes = [deployment.start_supernode(i, key, node_settings=NodeSettings(max_epsilon=8.0)) for i, key in
                 enumerate(keys)]  # fmt: skip
        deployment.wait_for(
            lambda: sum(n["status"] == "online" for n in deployment.registered_nodes()) == 3, 120, "3 SuperNodes"
        )
        killed: list[str] = []

        def kill_once_masked(line: str) -> None:
            if f"fedsynth {UPDATE}: 3 masked vector(s) in; unmasking" in line and not killed:
                nodes[2].kill()
                killed.append(line)

        submission = deployment.submit(deployment_run_config(settings, out, nodes=3), on_line=kill_once_masked,
                                       timeout=420)  # fmt: skip
        assert killed, submission.log.read_text()[-3000:]
        train = json.loads((out / "train.json").read_text())
        assert sorted(train["statistics_release"]["trained"]) == sorted(node_ids)  # all three before the kill
        round_1 = train["rounds"][0]
        assert sorted(round_1["trained"]) == sorted(node_ids), "node 2's update is in the sum"
        assert [f["node"] for f in round_1["failed"]] == [node_ids[2]]
        assert "unmasked from the others' shares" in round_1["failed"][0]["reason"]
        updates = [
            torch.load(next((deployment.node_dir(k) / "ledgers").glob("replay-*.pt")), weights_only=False)
            for k in range(3)
        ]  # fmt: skip (each node's trained bundle, kept on its own disk)
        users = [split_node_file(path, data.catalogue, seed=0)[1].train.shape[0] for path in data.data]
        state = torch.load(out / "checkpoints" / "round-1.pt", weights_only=False)["state"]
        for name, tensor in state.items():
            expected = sum(n * u["arrays"][name].double() for n, u in zip(users, updates, strict=True)) / sum(users)
            assert torch.allclose(tensor.double(), expected, atol=1e-6), name
        ledger = json.loads(next((deployment.node_dir(2) / "ledgers").glob("ledger-*.json")).read_text())
        paid = [(h["release"], h["secure_aggregation"]) for h in ledger["history"] if "release" in h]
        # it paid for what it sent, all masked: the statistics, the co-occurrence's share (released, or the
        # statistics again below its noise: the same event) and its round
        assert paid == [("statistics", True), ("cooccurrence", True), ("round", True)]
        assert not deployment.database.exists(), "the SuperLink kept its state in memory"
        secure = json.loads((out / "metrics.json").read_text())["privacy"]["secure_aggregation"]
        assert secure["signed"] is True, "every secure sum ran signed (the nodes' auth keys, the operator's list)"
        assert "malicious (active) server" in secure["threat_model"]
    finally:
        deployment.stop()
    assert not any(p.alive() for p in deployment.processes.values())
