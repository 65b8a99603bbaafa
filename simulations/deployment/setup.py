"""The fiddly parts of a real deployment: TLS certificates, SuperNode keys, per-node data files.

* :func:`make_certificates`: a CA and a SuperLink certificate signed by it, with subject
  alternative names for every hostname / IP the SuperNodes will dial (``serverAuth``).
* :func:`make_node_keys`: one ECDSA P-384 key pair per SuperNode in OpenSSH format (what
  ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read).
* :func:`split_data`: cut a dataset into one file per node (``user,item``) plus the shared public
  item catalogue, for trials; each node splits its own users when it loads its file.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.data.prepare import DataSettings
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.runtime.files import write_atomic, write_csv_atomic


@dataclass(frozen=True)
class Certificates:
    ca_certificate: Path  # give to every SuperNode (--root-certificates) and to `flwr` (root-certificates)
    ca_key: Path  # keep offline: it signs server certificates
    server_certificate: Path  # SuperLink --ssl-certfile
    server_key: Path  # SuperLink --ssl-keyfile


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data), mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def _refuse_overwrite(paths: list[Path]) -> None:
    existing = [p for p in paths if p.exists()]
    if existing:
        raise FedsynthError(
            f"{existing[0]} already exists; refusing to overwrite keys or certificates. Choose another --out."
        )


def make_certificates(out: Path, hosts: list[str], days: int = 365) -> Certificates:
    """A CA and a SuperLink certificate valid for ``hosts`` (DNS names or IP addresses) for ``days`` days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ConfigError("--host: give at least one hostname or IP address the SuperNodes will connect to.")
    paths = Certificates(out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key")
    _refuse_overwrite([paths.ca_certificate, paths.ca_key, paths.server_certificate, paths.server_key])
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsynth CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    alternative_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alternative_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternative_names.append(x509.DNSName(host))
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL
    _write_private(paths.ca_key, ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    _write_public(paths.ca_certificate, ca_cert.public_bytes(pem))
    _write_private(paths.server_key, server_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    _write_public(paths.server_certificate, server_cert.public_bytes(pem))
    return paths


@dataclass(frozen=True)
class NodeKey:
    private: Path  # stays on the SuperNode's machine: --auth-supernode-private-key
    public: Path  # registered with the SuperLink: flwr supernode register PUBLIC_KEY


def make_node_keys(out: Path, names: list[str]) -> list[NodeKey]:
    """One ECDSA P-384 key pair per name: ``out/<name>`` (private) and ``out/<name>.pub`` (OpenSSH format)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = [NodeKey(out / name, out / f"{name}.pub") for name in names]
    _refuse_overwrite([p for k in keys for p in (k.private, k.public)])
    for key in keys:
        private = ec.generate_private_key(ec.SECP384R1())
        _write_private(
            key.private,
            private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ),
        )
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write_public(key.public, public + b"\n")
    return keys


@dataclass(frozen=True)
class NodeFiles:
    catalogue: Path  # the public item catalogue, the same on every node
    data: list[Path]  # data[k]: node k's own interactions (user, item)


def split_data(settings: DataSettings, nodes: int, out: Path, seed: int) -> NodeFiles:
    """Cut the (preprocessed, implicit) dataset into ``nodes`` files of disjoint users, for trials.

    Users are assigned at random (IID); every interaction of a user goes to its node's file. The
    catalogue lists every item of the dataset (public knowledge in this setting: item ids only).
    """
    from fedsynth.common.data.prepare import prepare
    from fedsynth.common.runtime.seeding import rng_for

    if nodes < 1:
        raise ConfigError(f"--nodes must be at least 1, got {nodes}.")
    interactions = prepare(settings).interactions
    if interactions.num_users < nodes:
        raise ConfigError(f"{interactions.num_users} users cannot be split into {nodes} nodes; use fewer nodes.")
    out.mkdir(parents=True, exist_ok=True)
    catalogue = out / "catalogue.txt"
    _write_public(catalogue, ("\n".join(str(i) for i in interactions.item_ids) + "\n").encode())
    owner = rng_for(seed, "split-data").permutation(interactions.num_users) % nodes
    coo = interactions.matrix.tocoo()
    frame = pd.DataFrame(
        {
            "user": np.asarray(interactions.user_ids, dtype=object)[coo.row],
            "item": np.asarray(interactions.item_ids, dtype=object)[coo.col],
            "node": owner[coo.row],
        }
    )
    paths = []
    for node in range(nodes):
        path = out / f"node-{node}.csv"
        write_csv_atomic(path, frame[frame["node"] == node][["user", "item"]])
        paths.append(path)
    return NodeFiles(catalogue, paths)
