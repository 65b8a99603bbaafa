"""Separate hosts on one Linux machine: the SuperLink and each SuperNode in its own network namespace.

:func:`namespaced_hosts` builds, for one test or trial, a small network that looks like separate
machines on a LAN:

- a Linux bridge ``fs<id>br`` in the root namespace with address ``10.<a>.<b>.1/24``, so that the
  ``flwr`` CLI (which stays in the root namespace) reaches the SuperLink's API;
- a namespace ``fs-<id>-link`` for the SuperLink (``10.<a>.<b>.2``) and ``fs-<id>-node<k>`` for
  SuperNode ``k`` (``10.<a>.<b>.<10+k>``), each joined to the bridge by a veth pair whose inner end
  is ``eth0``; ``lo`` is up in every namespace (the SuperNode's ClientApp API and the ServerApp's
  runtime API listen on loopback);
- each node's link capped at ``rate`` (``tc ... tbf``) in both directions: on the inner ``eth0``
  (what the node sends) and on the bridge end (what it receives).

:meth:`Hosts.cut` sets a node's bridge end down (its cable pulled: the node's ``eth0`` loses its
carrier, so what it sends fails at once with "No route to host", what is sent to it is dropped, and
no connection is reset) and :meth:`Hosts.restore` sets it up again. Everything is removed when the context
exits, even after a failure; removal is idempotent (a thing already gone is fine).

Assumptions: Linux, root (``CAP_NET_ADMIN`` and the right to mount ``/run/netns``), iproute2's
``ip`` and ``tc``. Bridged traffic may pass the root namespace's iptables FORWARD chain where
``br_netfilter`` is loaded; a host whose firewall drops forwarded traffic will fail the
connectivity check in :func:`namespaced_hosts` with a clear error rather than hang a run. Names
carry a random id so that an earlier run that crashed before its cleanup does not collide
(:func:`stale_names` lists such leftovers; :func:`remove_stale` removes them).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from fedsynth.common.errors import FedsynthError

PREFIX = "fs-"  # namespaces: fs-<id>-link, fs-<id>-node<k>; links: fs<id>br, fs<id>l, fs<id>n<k>
_LINK_NAME = re.compile(r"fs[0-9a-f]{6}(br|l|n[0-9]+)")


class NamespaceError(FedsynthError):
    """A namespace, link or qdisc could not be created (or namespaces are not permitted here)."""


def ip(*args: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS`` (in ``namespace`` when given); raises :class:`NamespaceError` with ip's message on failure."""
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NamespaceError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done


def tc(*args: str, namespace: str | None = None) -> None:
    """``tc ARGS`` (in ``namespace`` when given), raising :class:`NamespaceError` on failure."""
    command = [*(["ip", "netns", "exec", namespace] if namespace else []), "tc", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NamespaceError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here (not root, no ``ip``/``tc``, ``ip netns add`` refused); None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"{PREFIX}{secrets.token_hex(3)}-probe"
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` is not permitted here: {done.stderr.strip()}"
    ip("netns", "delete", probe, check=False)
    return None


@dataclass
class Hosts:
    """The namespaces of one deployment: their names, addresses and the bridge ends of the nodes' links."""

    token: str
    subnet: ipaddress.IPv4Network
    nodes: int
    rate: str
    created_namespaces: list[str] = field(default_factory=list)
    created_links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"fs{self.token}br"

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace (where the ``flwr`` CLI runs)."""
        return str(self.subnet.network_address + 1)

    @property
    def link_namespace(self) -> str:
        return f"{PREFIX}{self.token}-link"

    @property
    def link_address(self) -> str:
        """The SuperLink's address: what it binds, what the nodes dial and what its certificate names."""
        return str(self.subnet.network_address + 2)

    def node_namespace(self, index: int) -> str:
        return f"{PREFIX}{self.token}-node{index}"

    def node_address(self, index: int) -> str:
        return str(self.subnet.network_address + 10 + index)

    def node_link(self, index: int) -> str:
        """Node ``index``'s veth end on the bridge (root namespace): what :meth:`cut` sets down."""
        return f"fs{self.token}n{index}"

    def prefix(self, namespace: str) -> list[str]:
        """The command prefix that runs a program inside ``namespace``."""
        return ["ip", "netns", "exec", namespace]

    def command_prefixes(self) -> dict[str, list[str]]:
        """Process name -> prefix, as :class:`~fedsynth.simulations.deployment.local.LocalDeployment` names them."""
        prefixes = {"superlink": self.prefix(self.link_namespace)}
        for index in range(self.nodes):
            prefixes[f"node-{index}"] = self.prefix(self.node_namespace(index))
        return prefixes

    def cut(self, index: int) -> None:
        """Pull node ``index``'s cable: its bridge end goes down, its ``eth0`` loses carrier (see module docstring)."""
        ip("link", "set", self.node_link(index), "down")

    def restore(self, index: int) -> None:
        """Plug node ``index``'s cable back in."""
        ip("link", "set", self.node_link(index), "up")

    # Building and removing

    def _host(self, namespace: str, outer: str, address: str, capped: bool) -> None:
        ip("netns", "add", namespace)
        self.created_namespaces.append(namespace)
        ip("link", "set", "lo", "up", namespace=namespace)
        ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        self.created_links.append(outer)
        ip("link", "set", outer, "master", self.bridge)
        ip("link", "set", outer, "up")
        ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0", namespace=namespace)
        ip("link", "set", "eth0", "up", namespace=namespace)
        if capped:  # both directions: eth0 shapes what the node sends, the bridge end what it receives
            shaping = ("root", "tbf", "rate", self.rate, "burst", "32kbit", "latency", "400ms")
            tc("qdisc", "add", "dev", "eth0", *shaping, namespace=namespace)
            tc("qdisc", "add", "dev", outer, *shaping)

    def build(self) -> None:
        """The bridge, the SuperLink's namespace and the nodes' (capped) namespaces."""
        ip("link", "add", self.bridge, "type", "bridge")
        self.created_links.append(self.bridge)
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self._host(self.link_namespace, f"fs{self.token}l", self.link_address, capped=False)
        for index in range(self.nodes):
            self._host(self.node_namespace(index), self.node_link(index), self.node_address(index), capped=True)

    def remove(self) -> None:
        """Delete every namespace and link this object created (deleting a namespace deletes its veth pair)."""
        for namespace in reversed(self.created_namespaces):
            ip("netns", "delete", namespace, check=False)
        for link in reversed(self.created_links):
            if ip("link", "show", link, check=False).returncode == 0:
                ip("link", "delete", link, check=False)
        self.created_namespaces.clear()
        self.created_links.clear()


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0–10.254.255.0 that overlaps no address or route of the root namespace."""
    used = ip("-4", "route", "show", "table", "all").stdout + ip("-4", "addr").stdout
    taken = []
    for word in used.split():
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{200 + secrets.randbelow(55)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(network) for network in taken if network.prefixlen > 0):
            return candidate
    raise NamespaceError("no free 10.x.y.0/24 subnet for the namespaces' bridge")


def check_reachable(hosts: Hosts, timeout: float = 5.0) -> None:
    """A TCP listener in the SuperLink's namespace, reached from the root namespace and from every node's."""
    port = 47000 + secrets.randbelow(1000)
    script = (
        "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        f"s.bind(('{hosts.link_address}',{port}));s.listen(16);s.settimeout({timeout * (hosts.nodes + 2)});"
        f"[s.accept()[0].close() for _ in range({hosts.nodes + 1})]"
    )
    server = subprocess.Popen([*hosts.prefix(hosts.link_namespace), "python3", "-c", script], stderr=subprocess.DEVNULL)
    try:
        dial = f"import socket;socket.create_connection(('{hosts.link_address}',{port}),timeout={timeout}).close()"
        for namespace in [None, *(hosts.node_namespace(k) for k in range(hosts.nodes))]:
            prefix = hosts.prefix(namespace) if namespace else []
            for _ in range(int(timeout * 10)):  # until the listener is up
                done = subprocess.run([*prefix, "python3", "-c", dial], capture_output=True, text=True, timeout=30)
                if done.returncode == 0:
                    break
            else:
                where = namespace or "the root namespace"
                raise NamespaceError(
                    f"{where} cannot reach {hosts.link_address}:{port} in {hosts.link_namespace} "
                    f"(a firewall on bridged traffic?): {done.stderr.strip()[-300:]}"
                )
    finally:
        server.kill()
        server.wait()


@contextlib.contextmanager
def namespaced_hosts(nodes: int, rate: str = "100mbit") -> Iterator[Hosts]:
    """Namespaces for a SuperLink and ``nodes`` SuperNodes on one bridge, node links capped at ``rate``.

    Raises :class:`NamespaceError` when something cannot be built (what was built is removed first).
    """
    hosts = Hosts(secrets.token_hex(3), _free_subnet(), nodes, rate)
    try:
        hosts.build()
        check_reachable(hosts)
        yield hosts
    finally:
        hosts.remove()


def stale_names() -> tuple[list[str], list[str]]:
    """Namespaces and links named like ours (``fs-*`` / ``fs*br``, ``fs*l``, ``fs*n<k>``): leftovers of crashed runs
    when no deployment is running."""
    namespaces = [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.startswith(PREFIX)]
    names = [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").stdout.splitlines()]
    return namespaces, [name for name in names if _LINK_NAME.fullmatch(name)]


def remove_stale() -> None:
    """Remove :func:`stale_names` (only when no deployment of ours is running on this machine)."""
    namespaces, links = stale_names()
    for namespace in namespaces:
        ip("netns", "delete", namespace, check=False)
    for link in links:
        ip("link", "delete", link, check=False)
