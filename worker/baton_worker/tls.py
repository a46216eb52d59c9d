"""Mutual TLS of every gRPC server and channel of the data plane (``--tls-dir DIR``).

``DIR`` has the layout of a mounted Kubernetes TLS Secret: ``ca.crt`` (the CAs a peer's
certificate must chain to: during a CA rotation the old and the new one), ``tls.crt`` and
``tls.key`` (this pod's certificate, presented as server and as client). Servers require a
client certificate signed by ``ca.crt``; clients present theirs and verify the server's against
``ca.crt`` and the pool's name (``--tls-server-name``, default: the first DNS name of our own
``tls.crt``, since every pod of a pool carries the same one; workers are dialled by IP).

Rotation: the kubelet replaces the files of a mounted Secret at once (a ``..data`` symlink
swap). :class:`TlsFiles` notices (a ``stat`` of the three files per check) and reloads, keeping
the previous set when the new one is inconsistent (a key that does not match its certificate, a
certificate no CA in ``ca.crt`` signed: a copy caught half-written). Servers pick up the new set
on their next TLS handshake (``grpc.dynamic_ssl_server_credentials``); clients make new channels
for new calls while calls in flight finish on the old ones (:class:`ChannelCache`, and the
router's pool). Connections already open stay up: TLS checks certificates only at the handshake.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from baton_worker.pki import key_matches, read_bundle, read_cert, signed_by

TLS_DIR_ENV = "BATON_TLS_DIR"
SERVER_NAME_ENV = "BATON_TLS_SERVER_NAME"
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
FILES = (CA_FILE, CERT_FILE, KEY_FILE)


@dataclass(frozen=True)
class Material:
    """One consistent set of the three files; ``generation`` counts the sets loaded."""

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)
    generation: int = 0
    not_after: dt.datetime = dt.datetime.min
    cas: int = 0  # certificates in ca.crt


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    """--tls-dir and --tls-server-name, shared by the worker and the router."""
    p.add_argument(
        "--tls-dir",
        default=os.environ.get(TLS_DIR_ENV, ""),
        help="mutual TLS on every gRPC server and channel: a directory with ca.crt, tls.crt, tls.key "
        "(a mounted TLS Secret; reloaded when they change). Default: $BATON_TLS_DIR; none: plaintext",
    )
    p.add_argument(
        "--tls-server-name",
        default=os.environ.get(SERVER_NAME_ENV, ""),
        help="name the peers' certificates must carry (default: the first DNS name of our own tls.crt)",
    )


def load_material(directory: str) -> tuple[bytes, bytes, bytes]:
    """(ca.crt, tls.crt, tls.key) of ``directory``, checked to belong together; ValueError (or
    OSError) naming the file otherwise."""
    data = {}
    for name in FILES:
        with open(os.path.join(directory, name), "rb") as f:
            data[name] = f.read()
    try:
        cas = read_bundle(data[CA_FILE])
    except ValueError as exc:
        raise ValueError(f"{CA_FILE}: {exc}") from None
    try:
        read_cert(data[CERT_FILE])
    except ValueError as exc:
        raise ValueError(f"{CERT_FILE}: {exc}") from None
    if not key_matches(data[CERT_FILE], data[KEY_FILE]):
        raise ValueError(f"{KEY_FILE}: not the private key of {CERT_FILE}")
    if not any(signed_by(data[CERT_FILE], ca.pem) for ca in cas):
        raise ValueError(f"{CERT_FILE}: signed by none of the {len(cas)} CA(s) in {CA_FILE}")
    return data[CA_FILE], data[CERT_FILE], data[KEY_FILE]


def _say(message: str) -> None:
    print(f"baton tls: {message}", file=sys.stderr, flush=True)


class TlsFiles:
    """The three files of one directory, reloaded when they change (thread-safe)."""

    def __init__(self, directory: str, server_name: str = "") -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._stamp = self._stat()
        try:
            ca, cert, key = load_material(directory)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--tls-dir {directory}: {exc}") from None
        self._material = self._make(ca, cert, key, 1)
        self._refused_stamp: tuple | None = None
        names = read_cert(cert).dns_names
        if not server_name and not names:
            raise ValueError(f"--tls-dir {directory}: {CERT_FILE} has no DNS name; give --tls-server-name")
        self.server_name = server_name or names[0]

    @staticmethod
    def _make(ca: bytes, cert: bytes, key: bytes, generation: int) -> Material:
        return Material(ca, cert, key, generation, read_cert(cert).not_after, len(read_bundle(ca)))

    def _stat(self) -> tuple:
        stamp = []
        for name in FILES:
            try:
                st = os.stat(os.path.join(self.directory, name))  # follows the kubelet's symlinks
                stamp.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def current(self) -> Material:
        """The newest consistent set of files (reloaded when a ``stat`` shows a change)."""
        stamp = self._stat()
        with self._lock:
            if stamp == self._stamp:
                return self._material
            try:
                ca, cert, key = load_material(self.directory)
            except (OSError, ValueError) as exc:
                # Half-written or broken: keep the last good set, look again at the next check.
                if stamp != self._refused_stamp:
                    self._refused_stamp = stamp
                    _say(f"{self.directory}: keeping the certificate loaded before: {exc}")
                return self._material
            self._stamp = stamp
            old = self._material
            if (ca, cert, key) != (old.ca, old.cert, old.key):
                self._material = self._make(ca, cert, key, old.generation + 1)
                m = self._material
                _say(
                    f"reloaded {self.directory} (generation {m.generation}): certificate valid until "
                    f"{m.not_after:%Y-%m-%dT%H:%M:%SZ}, {m.cas} CA(s)"
                )
            return self._material

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials of a server that requires client certificates; a server using them
        takes the newest files at every new connection."""
        first = self.current()
        served = [first.generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            try:
                m = self.current()
            except Exception:  # never fail a handshake for a check: serve what was loaded
                return None
            if m.generation == served[0]:
                return None
            served[0] = m.generation
            return _server_config(m)

        return grpc.dynamic_ssl_server_credentials(
            _server_config(first), fetch, require_client_authentication=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        m = self.current()
        return grpc.ssl_channel_credentials(
            root_certificates=m.ca, private_key=m.key, certificate_chain=m.cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """Verify the server as the pool's name, not as the address dialled."""
        return [("grpc.ssl_target_name_override", self.server_name)]


def _server_config(m: Material) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(m.key, m.cert)], root_certificates=m.ca)


_FROM_ENV: dict[tuple[str, str], TlsFiles] = {}
_FROM_ENV_LOCK = threading.Lock()


def from_env() -> TlsFiles | None:
    """The TlsFiles named by $BATON_TLS_DIR (one per process), None when unset. How the ranks of
    a tensor-parallel worker, started by it, learn its ``--tls-dir``."""
    directory = os.environ.get(TLS_DIR_ENV, "")
    if not directory:
        return None
    key = (directory, os.environ.get(SERVER_NAME_ENV, ""))
    with _FROM_ENV_LOCK:
        if key not in _FROM_ENV:
            _FROM_ENV[key] = TlsFiles(*key)
        return _FROM_ENV[key]


def export_env(tls: TlsFiles | None) -> None:
    """Put ``tls`` in the environment, for the processes this one starts (see :func:`from_env`)."""
    if tls is None:
        return
    os.environ[TLS_DIR_ENV] = tls.directory
    os.environ[SERVER_NAME_ENV] = tls.server_name


def add_port(server: Any, address: str, tls: TlsFiles | None) -> int:
    """Bind ``address`` on a grpc (or grpc.aio) server: with client authentication when ``tls``."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials())


def channel(address: str, tls: TlsFiles | None, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A blocking channel to ``address``: mutual TLS with ``tls``'s current files, else plaintext."""
    opts = list(options or [])
    if tls is None:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, tls.channel_credentials(), options=opts + tls.channel_options())


def aio_channel(
    address: str, tls: TlsFiles | None, options: list[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to ``address``, as :func:`channel`."""
    opts = list(options or [])
    if tls is None:
        return grpc.aio.insecure_channel(address, options=opts)
    return grpc.aio.secure_channel(address, tls.channel_credentials(), options=opts + tls.channel_options())


class ChannelCache:
    """Blocking channels by address. When the TLS files change, every channel is retired: new
    calls get new channels with the new certificate, calls in flight finish on the old ones,
    which are closed ``retire_s`` later (longer than any call on them may run: a pull is bounded by
    ``--kv-timeout-s``; channels left open meanwhile cost a connection each, nothing else)."""

    def __init__(
        self, tls: TlsFiles | None, options: list[tuple[str, Any]] | None = None, retire_s: float = 3600.0
    ) -> None:
        self._tls = tls
        self._options = list(options or [])
        self._retire_s = retire_s
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._generation = tls.current().generation if tls is not None else 0
        self._retired: list[tuple[float, grpc.Channel]] = []

    def get(self, address: str) -> grpc.Channel:
        generation = self._tls.current().generation if self._tls is not None else 0
        now = time.monotonic()
        with self._lock:
            if generation != self._generation:
                self._generation = generation
                self._retired += [(now + self._retire_s, ch) for ch in self._channels.values()]
                self._channels = {}
            done = [ch for until, ch in self._retired if until <= now]
            self._retired = [(until, ch) for until, ch in self._retired if until > now]
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = channel(address, self._tls, self._options)
        for old in done:
            old.close()
        return ch

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values()) + [ch for _, ch in self._retired]
            self._channels, self._retired = {}, []
        for ch in channels:
            ch.close()
