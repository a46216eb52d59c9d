"""The sandbox's PKI: one CA, serving certs for the API server and etcd, client certs per
component, and the service-account signing key pair. Written once per sandbox state dir."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .addresses import NODE_IP, NODE_NAME

VALIDITY = dt.timedelta(days=365)
SERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
# 10.96.0.1 is the `kubernetes` Service; NODE_IP is where the API server listens with a real node.
SERVER_IPS = ("127.0.0.1", "::1", "10.96.0.1", NODE_IP)


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate's user (CN) and groups (O)."""

    file_stem: str
    user: str
    groups: tuple[str, ...] = ()


# Who each component authenticates as. The scheduler and controller-manager get their
# built-in RBAC roles; admin and kwok (the simulated kubelets) are cluster admins.
CLIENTS: tuple[ClientIdentity, ...] = (
    ClientIdentity("admin", "baton-sandbox-admin", ("system:masters",)),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("kwok", "kwok-controller", ("system:masters",)),
    ClientIdentity("apiserver-etcd-client", "kube-apiserver-etcd-client"),
    ClientIdentity("front-proxy-client", "front-proxy-client"),
    # The real node (`up --real-node`): its kubelet (authorized by the Node authorizer), the API
    # server calling kubelets (logs, exec, port-forward), kube-proxy and CoreDNS.
    ClientIdentity("kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)),
    ClientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
    ClientIdentity("kube-proxy", "system:kube-proxy"),
    ClientIdentity("coredns", "baton-sandbox-coredns"),
)
# The kubelet's serving certificate (server auth for its node name and address).
KUBELET_SERVING = "kubelet-serving"


@dataclass(frozen=True)
class Pki:
    """Paths of every file of the sandbox PKI."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def client_cert(self, stem: str) -> Path:
        return self.dir / f"{stem}.crt"

    def client_key(self, stem: str) -> Path:
        return self.dir / f"{stem}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    # EC keys: generating them is instant, unlike RSA, which keeps `up` fast.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, groups: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usages: tuple[x509.ObjectIdentifier, ...] = (),
    san: x509.SubjectAlternativeName | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_pki(directory: Path) -> Pki:
    """Create the PKI under ``directory`` unless it is already complete; return its paths."""
    pki = Pki(directory)
    wanted = [pki.ca_cert, pki.server_cert, pki.sa_key, pki.sa_pub]
    wanted += [pki.client_cert(c.file_stem) for c in CLIENTS] + [pki.client_cert(KUBELET_SERVING)]
    if all(p.exists() for p in wanted):
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_key = _key()
    ca_name = _name("baton-sandbox-ca")
    ca_cert = _sign(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.ca_cert, ca_cert)

    server_key = _key()
    san = x509.SubjectAlternativeName(
        [x509.DNSName(n) for n in SERVER_NAMES]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
    )
    # One serving cert for kube-apiserver and etcd: both listen on loopback only.
    server_cert = _sign(
        _name("kube-apiserver"),
        server_key.public_key(),
        ca_name,
        ca_key,
        usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        san=san,
    )
    _write_key(pki.server_key, server_key)
    _write_cert(pki.server_cert, server_cert)

    for client in CLIENTS:
        key = _key()
        cert = _sign(
            _name(client.user, client.groups),
            key.public_key(),
            ca_name,
            ca_key,
            usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        )
        _write_key(pki.client_key(client.file_stem), key)
        _write_cert(pki.client_cert(client.file_stem), cert)

    kubelet_key = _key()
    kubelet_cert = _sign(
        _name(f"system:node:{NODE_NAME}", ("system:nodes",)),
        kubelet_key.public_key(),
        ca_name,
        ca_key,
        usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
        san=x509.SubjectAlternativeName(
            [x509.DNSName(NODE_NAME), x509.IPAddress(ipaddress.ip_address(NODE_IP))]
        ),
    )
    _write_key(pki.client_key(KUBELET_SERVING), kubelet_key)
    _write_cert(pki.client_cert(KUBELET_SERVING), kubelet_cert)

    # Service-account tokens are signed with RSA (RS256), the algorithm every client accepts.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
