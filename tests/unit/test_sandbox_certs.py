"""The sandbox PKI: identities, SANs, idempotence; kubeconfig dicts."""

from __future__ import annotations

import ipaddress

import pytest
from baton_dev.sandbox.certs import CLIENTS, ensure_pki
from baton_dev.sandbox.kubeconfig import kubeconfig_dict
from cryptography import x509
from cryptography.x509.oid import NameOID


def test_pki_has_identities_and_loopback_sans(tmp_path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    assert server.issuer == ca.subject
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    admin = x509.load_pem_x509_certificate(pki.client_cert("admin").read_bytes())
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    cm = x509.load_pem_x509_certificate(pki.client_cert("controller-manager").read_bytes())
    assert cm.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    assert {c.file_stem for c in CLIENTS} >= {"admin", "controller-manager", "scheduler", "kwok"}
    assert oct(pki.client_key("admin").stat().st_mode & 0o777) == "0o600"


def test_pki_is_kept_when_complete(tmp_path) -> None:
    first = ensure_pki(tmp_path / "pki").ca_cert.read_bytes()
    assert ensure_pki(tmp_path / "pki").ca_cert.read_bytes() == first


def test_kubeconfig_dict_takes_exactly_one_credential(tmp_path) -> None:
    cfg = kubeconfig_dict("https://127.0.0.1:1", tmp_path / "ca.crt", "system:serviceaccount:a:b", token="t")
    assert cfg["users"][0]["user"] == {"token": "t"}
    assert cfg["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"
    with pytest.raises(ValueError, match="exactly one"):
        kubeconfig_dict("https://x", tmp_path / "ca.crt", "u")
