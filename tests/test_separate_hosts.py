"""The deployment with each process on its own host: SuperLink and SuperNodes in separate network namespaces.

simulations/deployment/netns.py puts the SuperLink in one Linux network namespace and each of three
SuperNodes in its own, joined by a bridge (the ``flwr`` CLI reaches the SuperLink from the root
namespace), each node's link capped at 100 Mbit/s both ways. TLS certificates name the SuperLink's
namespace address (the nodes dial it, not 127.0.0.1), node authentication is on.

The run has four rounds (min-clients 2 of 3, allow-degraded, reply-timeout 30 s). Node 2's cable is
pulled (its bridge end set down: it loses carrier, nothing is reset) as soon as round 1 ends, so
it misses round 2; it is plugged back in when round 2 ends (about 30 s later). The run must complete;
round 2 must record node 2 as failed or missing; node 2 must rejoin (the same process, no restart) and
train in a later round; its ledger on its own disk must hold the ε it last reported. Seconds per round
are printed (and, with ``FEDSYNTH_LOOPBACK_COMPARISON=1``, those of the same run over 127.0.0.1 without
the cut, for comparison).

The nodes keep reconnecting for up to 300 s (``--max-wait-time 300``, no retry limit): with
LocalDeployment's default (3 tries, 30 s) a SuperNode cut off for more than about 30 s gives up for good
("Giving up reconnection after 30.6 seconds and 2 tries", [Errno 113] No route to host) and its
process lingers without serving anything, so it would never rejoin (measured, docs/deployment.md).

Needs root, iproute2 and the right to add namespaces; skipped (with the reason) otherwise.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from fedsynth.common.config.run import RunConfig
from fedsynth.simulations.deployment.local import LocalDeployment, NodeSettings, deployment_run_config
from fedsynth.simulations.deployment.netns import Hosts, namespaced_hosts, stale_names, unavailable_reason
from fedsynth.simulations.deployment.setup import make_certificates, make_node_keys, split_data

pytestmark = pytest.mark.slow

ROUNDS = 4
CUT = 2  # the node whose cable is pulled
SETTINGS = {
    "num-server-rounds": ROUNDS,
    "synthesizers": "vae",
    "recommenders": "popularity",
    "synthetic-users": 200,
    "vae-batch-size": 32,
    "gan-batch-size": 32,
    "discriminator-steps": 3,
    "reply-timeout": 30.0,
    "allow-degraded": True,
}
PATIENT = NodeSettings(max_epsilon=8.0, max_retries=None, max_wait_time=300.0)  # reconnects through a long cut


@pytest.fixture
def namespaces_permitted() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def run_deployment(root: Path, hosts: Hosts | None, cut: bool) -> tuple[dict[str, Any], list[int], LocalDeployment]:
    """Certificates, keys, data, a SuperLink and three SuperNodes (in ``hosts``' namespaces, or on 127.0.0.1 when
    None), one run; with ``cut``, node ``CUT``'s link is down from the end of round 1 to the end of round 2.

    Returns train.json, the node ids and the (stopped) deployment.
    """
    address = hosts.link_address if hosts is not None else "127.0.0.1"
    certificates = make_certificates(root / "certs", [address])  # the address the nodes dial, nothing else
    keys = make_node_keys(root / "keys", [f"node-{k}" for k in range(3)])
    data = split_data(RunConfig(gen_users=360, gen_items=300).data(), 3, root / "data", seed=0)
    placement: dict[str, Any] = {}
    if hosts is not None:
        placement = {"host": hosts.link_address, "command_prefixes": hosts.command_prefixes()}
    deployment = LocalDeployment(root / "deployment", certificates, data, persistent_superlink=False, **placement)
    events: dict[str, float] = {}

    def pull_the_cable(line: str) -> None:
        if f"fedsynth round 1/{ROUNDS}" in line and "cut" not in events and hosts is not None:
            hosts.cut(CUT)
            events["cut"] = time.perf_counter()
        elif f"fedsynth round 2/{ROUNDS}" in line and "cut" in events and "restored" not in events:
            assert hosts is not None
            hosts.restore(CUT)
            events["restored"] = time.perf_counter()

    out = root / "out"
    try:
        deployment.start_superlink()
        node_ids = [deployment.register(key) for key in keys]
        nodes = [deployment.start_supernode(k, key, node_settings=PATIENT) for k, key in enumerate(keys)]
        deployment.wait_for(
            lambda: sum(n["status"] == "online" for n in deployment.registered_nodes()) == 3, 120, "3 SuperNodes"
        )
        submission = deployment.submit(
            deployment_run_config(SETTINGS, out, nodes=3), on_line=pull_the_cable if cut else None, timeout=420
        )
        assert submission.completed(), submission.log.read_text()[-3000:]
        if cut:
            assert "cut" in events and "restored" in events, submission.log.read_text()[-3000:]
            assert nodes[CUT].alive(), f"node {CUT} exited while cut off:\n{nodes[CUT].text()[-3000:]}"
            print(f"node {CUT} cut off for {events['restored'] - events['cut']:.0f} s")
            for line in nodes[CUT].text().splitlines():  # Flower's reconnection messages
                if "Connection" in line or "Giving up" in line:
                    print(f"  node {CUT}: {line.strip()}")
    finally:
        deployment.stop()
    train = json.loads((out / "train.json").read_text())
    return train, node_ids, deployment


def round_seconds(train: dict[str, Any]) -> list[float]:
    return [round(float(r["seconds"]), 1) for r in train["rounds"]]


def test_nodes_on_separate_hosts_survive_a_pulled_cable(tmp_path: Path, namespaces_permitted: None) -> None:
    started = time.perf_counter()
    with namespaced_hosts(nodes=3, rate="100mbit") as hosts:
        train, node_ids, deployment = run_deployment(tmp_path / "netns", hosts, cut=True)
        namespaces = [hosts.link_namespace, *(hosts.node_namespace(k) for k in range(3))]
    assert not any(name in stale_names()[0] for name in namespaces), "the namespaces were not removed"
    cut_node = node_ids[CUT]
    rounds = train["rounds"]
    print(f"netns (100 Mbit/s node links): seconds per round {round_seconds(train)}")
    for k, r in enumerate(rounds, start=1):
        failed = [f["node"] for f in r["failed"]]
        print(f"  round {k}: trained {sorted(r['trained'])}, failed {failed}, missing {r.get('missing_from_sample')}")

    assert len(rounds) == ROUNDS
    assert sorted(rounds[0]["trained"]) == sorted(node_ids), "every node trains before the cut"
    second = rounds[1]
    assert cut_node not in second["trained"]
    assert sorted(second["trained"]) == sorted(node_ids[:CUT] + node_ids[CUT + 1 :]), "quorum: the other two"
    lost = {f["node"] for f in second["failed"]} | set(second.get("missing_from_sample") or [])
    assert cut_node in lost, f"round 2 must record node {cut_node} as failed or missing: {second}"
    rejoined = [k for k in range(2, ROUNDS) if cut_node in rounds[k]["trained"]]
    assert rejoined, f"node {cut_node} never trained again after its link came back: {rounds[2:]}"
    print(f"node {cut_node}: failed in round 2, trained again in round(s) {[k + 1 for k in rejoined]}")

    # What it reported for its last round is what its own ledger (its disk, in its namespace's process) holds
    # for that round; the DP evaluations after the rounds add to it, within its cap.
    last = rejoined[-1] + 1
    reported = rounds[last - 1]["epsilon_by_node"][str(cut_node)]
    ledgers = list((deployment.node_dir(CUT) / "ledgers").glob("ledger-*.json"))
    assert len(ledgers) == 1
    ledger = json.loads(ledgers[0].read_text())
    history = [h for h in ledger["history"] if "release" in h]
    entry = [h for h in history if h["release"] == "round" and h["round"] == last]
    assert len(entry) == 1 and entry[0]["epsilon_total"] == pytest.approx(reported)
    assert reported <= history[-1]["epsilon_total"] <= ledger["max_epsilon"] == 8.0
    # Round 2: if its task arrived before the cut the node trained and paid, though its reply never counted.
    paid = [h["epsilon_total"] for h in history if h["release"] == "round" and h["round"] == 2]
    print(f"node {cut_node}'s ledger: round 2 " + (f"paid (total {paid[0]:.3f})" if paid else "not paid"))

    if os.environ.get("FEDSYNTH_LOOPBACK_COMPARISON") == "1":
        loopback, _, _ = run_deployment(tmp_path / "loopback", None, cut=False)
        print(f"loopback (127.0.0.1, no cut): seconds per round {round_seconds(loopback)}")
    print(f"separate-hosts test: {time.perf_counter() - started:.0f} s")
