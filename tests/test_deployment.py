"""Deployment over real processes on 127.0.0.1: TLS, node authentication, a node killed mid-run, restarts.

One SuperLink (TLS, --enable-supernode-auth, persistent database) and three registered SuperNodes,
each with its own data file and ledger directory, run the full pipeline; an unregistered key and a
node without the CA are refused; one node is SIGKILLed after round 1 and the run completes with the
others; the restarted node's ledger holds the ε it had spent; a restarted SuperLink still knows the
registered nodes. Every process is stopped at the end, even on failure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from common.federation import RunConfig
from simulations.deploy import LocalDeployment, deployment_run_config
from simulations.deploy_setup import make_certificates, make_node_keys, split_data

pytestmark = pytest.mark.slow


def test_deployment_over_real_processes(tmp_path: Path) -> None:
    started = time.perf_counter()
    certificates = make_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"])
    keys = make_node_keys(tmp_path / "keys", ["node-0", "node-1", "node-2", "intruder"])
    data = split_data(RunConfig(gen_users=360, gen_items=300).data(), 3, tmp_path / "data", seed=0)
    out = tmp_path / "out"
    settings = deployment_run_config(
        {
            "num-server-rounds": 2,
            "synthesizers": "vae",
            "recommenders": "ease",
            "synthetic-users": 200,
            "vae-batch-size": 32,
            "gan-batch-size": 32,
            "discriminator-steps": 3,
            "reply-timeout": 180.0,
        },
        out,
        nodes=3,
    )
    deployment = LocalDeployment(tmp_path / "deployment", certificates, data)
    try:
        deployment.start_superlink()
        node_ids = [deployment.register(key) for key in keys[:3]]
        nodes = [deployment.start_supernode(i, key) for i, key in enumerate(keys[:3])]
        intruder = deployment.start_supernode(0, keys[3], name="intruder")  # a key the SuperLink never registered
        no_ca = deployment.start_supernode(1, keys[0], with_ca=False, name="no-ca")  # TLS without the CA
        deployment.wait_for(
            lambda: sum(n["status"] == "online" for n in deployment.registered_nodes()) == 3, 120, "3 SuperNodes"
        )

        killed = []

        def kill_after_round_one(line: str) -> None:
            if "fedsynth round 1/2" in line and not killed:
                nodes[2].kill()  # a crash: SIGKILL to the SuperNode and its ClientApp processes
                killed.append(time.perf_counter())

        code = deployment.submit(settings, on_line=kill_after_round_one, timeout=420)

        assert code == 0, (tmp_path / "deployment" / "logs" / "run.log").read_text()[-3000:]
        assert killed, "round 1 never finished"
        metrics = json.loads((out / "metrics.json").read_text())
        for name in ("report.md", "synthetic.parquet", "synthetic_meta.json", "train.json", "checkpoints/round-2.pt"):
            assert (out / name).is_file(), name
        assert metrics["clients"]["missing"] == [node_ids[2]]
        assert f"Missing at the end: {node_ids[2]}" in (out / "report.md").read_text()
        assert metrics["fidelity"] == {}, "the deployed server must not read any data"
        assert "synthetic/ease" in metrics["recommenders"]
        train = json.loads((out / "train.json").read_text())
        assert sorted(train["rounds"][0]["trained"]) == sorted(node_ids)
        assert node_ids[2] not in train["rounds"][1]["trained"]
        spent_before_crash = train["rounds"][0]["epsilon_by_node"][str(node_ids[2])]

        # Refused: the unregistered key and the node without the CA never joined and gave up.
        deployment.wait_for(lambda: not intruder.alive() and not no_ca.alive(), 90, "the refused nodes to exit")
        assert {int(n["node-id"]) for n in deployment.registered_nodes()} == set(node_ids)

        # The crashed node restarts on the same data: its ledger (its own disk) holds what it spent.
        restarted = deployment.start_supernode(2, keys[2])
        ledgers = list((deployment.node_dir(2) / "ledgers").glob("ledger-*.json"))
        assert len(ledgers) == 1
        ledger = json.loads(ledgers[0].read_text())
        assert ledger["rounds"][-1]["epsilon_total"] == pytest.approx(spent_before_crash)
        # synthesizers = "vae": the GAN is not trained and spends nothing, so the ledger has no GAN events
        assert {e["model"] for e in ledger["events"]} == {"statistics", "vae"}
        deployment.wait_for(
            lambda: any(
                int(n["node-id"]) == node_ids[2] and n["status"] == "online" for n in deployment.registered_nodes()
            ),
            90,
            "the restarted node to reconnect",
            restarted,
        )

        # A SuperLink restart on the same database keeps the registered nodes.
        deployment.processes["superlink"].stop()
        deployment.start_superlink()
        assert {int(n["node-id"]) for n in deployment.registered_nodes()} == set(node_ids)
    finally:
        deployment.stop()
    assert not any(p.alive() for p in deployment.processes.values())
    print(f"deployment test: {time.perf_counter() - started:.0f} s")
