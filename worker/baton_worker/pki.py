"""X.509 for a pool's mutual TLS: issue a CA and the pool certificate, and read them back.

One certificate per pool serves every pod (workers and routers, as server and as client): its
SAN is the pool's identity ``<pool>.<namespace>.baton.internal``, which clients verify instead
of the address they dial (workers are reached by pod IP). Reading (:func:`read_cert`,
:func:`key_matches`, :func:`signed_by`) is deterministic; issuing (:func:`new_ca`,
:func:`new_leaf`) draws fresh keys. No gRPC here: the operator, which has no grpcio, issues with
this module too.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IDENTITY_DOMAIN = "baton.internal"
# Certificates start this long before they are issued, so a pod whose clock is a little behind
# the issuer's still accepts them.
BACKDATE = dt.timedelta(minutes=5)
_PEM_END = b"-----END CERTIFICATE-----"


def pool_identity(pool: str, namespace: str) -> str:
    """The DNS name a pool's certificate carries and its clients verify."""
    return f"{pool}.{namespace}.{IDENTITY_DOMAIN}"


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key, PEM-encoded."""

    cert: bytes
    key: bytes


@dataclass(frozen=True)
class CertInfo:
    """What the TLS code needs to know of one certificate."""

    pem: bytes
    subject: str
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime
    dns_names: tuple[str, ...]
    is_ca: bool
    fingerprint: str  # SHA-256 of the DER, hex

    @property
    def lifetime(self) -> dt.timedelta:
        return self.not_after - self.not_before

    @property
    def issued_at(self) -> dt.datetime:
        """When it was issued, for certificates issued here (backdated by :data:`BACKDATE`)."""
        return self.not_before + BACKDATE


def split_pem(bundle: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each with its own BEGIN/END lines (other text dropped)."""
    out = []
    for part in bundle.split(_PEM_END)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + _PEM_END + b"\n")
    return out


def _load(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from None


def read_cert(pem: bytes) -> CertInfo:
    """Parse one PEM certificate; ValueError when it is not one."""
    cert = _load(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        pem=pem,
        subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=names,
        is_ca=is_ca,
        fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def read_bundle(bundle: bytes) -> list[CertInfo]:
    """Every certificate of a PEM bundle; ValueError when it holds none or a bad one."""
    pems = split_pem(bundle)
    if not pems:
        raise ValueError("no PEM certificate in it")
    return [read_cert(p) for p in pems]


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether ``key_pem`` is the private key of ``cert_pem``; False when either does not parse."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        return _public_der(key.public_key()) == _public_der(_load(cert_pem).public_key())
    except (ValueError, TypeError):
        return False


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether ``ca_pem`` issued ``cert_pem`` (names and signature; not the validity period)."""
    try:
        _load(cert_pem).verify_directly_issued_by(_load(ca_pem))
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: generated in a millisecond (RSA takes far longer), and every TLS stack takes it.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: object, not_before: dt.datetime, not_after: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
    )


def new_ca(identity: str, not_before: dt.datetime, not_after: dt.datetime) -> Pem:
    """A fresh CA for the pool ``identity``. Its name carries the start time and a random tag, so
    that the old and the new CA of a rotation, both in ca.crt for a while, never share a subject."""
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "baton"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"{identity} CA {not_before:%Y%m%dT%H%M%SZ} {os.urandom(4).hex()}"
            ),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def new_leaf(identity: str, ca: Pem, not_before: dt.datetime, not_after: dt.datetime) -> Pem:
    """The pool certificate (server and client auth, SAN ``DNS:<identity>``) signed by ``ca``;
    it never outlives the CA."""
    ca_cert = _load(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "baton"),
            x509.NameAttribute(NameOID.COMMON_NAME, identity),
        ]
    )
    cert = (
        _builder(
            subject,
            ca_cert.subject,
            key.public_key(),
            not_before,
            min(not_after, ca_cert.not_valid_after_utc),
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_pool(
    identity: str, lifetime: dt.timedelta, ca_lifetime: dt.timedelta, now: dt.datetime
) -> tuple[Pem, Pem]:
    """A new CA and a pool certificate signed by it, both starting :data:`BACKDATE` before ``now``."""
    start = now - BACKDATE
    ca = new_ca(identity, start, now + ca_lifetime)
    return ca, new_leaf(identity, ca, start, now + lifetime)


def write_dir(directory: str, ca_bundle: bytes, leaf: Pem) -> None:
    """Write ``ca.crt``, ``tls.crt`` and ``tls.key`` into ``directory`` the way the kubelet updates
    a mounted Secret: into a new hidden directory, then an atomic swap of the ``..data`` symlink
    (the three names are symlinks through it), so a reader sees the old set or the new one, never
    a mix. Call it again to rotate; the key is readable by its owner only."""
    os.makedirs(directory, exist_ok=True)
    data_link = os.path.join(directory, "..data")
    previous = os.readlink(data_link) if os.path.islink(data_link) else ""
    fresh = tempfile.mkdtemp(prefix=f"..{dt.datetime.now(dt.UTC):%Y_%m_%d_%H_%M_%S}.", dir=directory)
    os.chmod(fresh, 0o755)
    for name, data, mode in (
        ("ca.crt", ca_bundle, 0o644),
        ("tls.crt", leaf.cert, 0o644),
        ("tls.key", leaf.key, 0o600),
    ):
        fd = os.open(os.path.join(fresh, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    _swap_symlink(os.path.basename(fresh), data_link)
    for name in ("ca.crt", "tls.crt", "tls.key"):
        path = os.path.join(directory, name)
        current = os.readlink(path) if os.path.islink(path) else ""
        if current != f"..data/{name}":
            _swap_symlink(f"..data/{name}", path)
    if previous and previous != os.path.basename(fresh):
        shutil.rmtree(os.path.join(directory, previous), ignore_errors=True)


def _swap_symlink(target: str, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)  # rename(2): atomic
