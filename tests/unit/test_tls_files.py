"""baton_worker.pki and baton_worker.tls without processes: issuing and reading certificates,
the kubelet-like directory swap, reloading (and refusing a half-written set), channel rotation."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from baton_worker.pki import (
    BACKDATE,
    Pem,
    issue_pool,
    key_matches,
    new_leaf,
    pool_identity,
    read_bundle,
    read_cert,
    signed_by,
    split_pem,
    write_dir,
)
from baton_worker.tls import ChannelCache, TlsFiles, load_material

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
NAME = pool_identity("p", "ns")


def test_pool_identity_and_issued_certificates() -> None:
    assert NAME == "p.ns.baton.internal"
    ca, leaf = issue_pool(NAME, 30 * DAY, 120 * DAY, NOW)
    ca_info, leaf_info = read_cert(ca.cert), read_cert(leaf.cert)
    assert ca_info.is_ca and not leaf_info.is_ca
    assert leaf_info.dns_names == (NAME,)
    assert leaf_info.not_before == NOW - BACKDATE and leaf_info.issued_at == NOW
    assert leaf_info.not_after == NOW + 30 * DAY and ca_info.not_after == NOW + 120 * DAY
    assert signed_by(leaf.cert, ca.cert) and not signed_by(ca.cert, leaf.cert)
    assert key_matches(leaf.cert, leaf.key) and not key_matches(leaf.cert, ca.key)
    assert key_matches(b"garbage", leaf.key) is False


def test_leaf_never_outlives_its_ca() -> None:
    ca, _ = issue_pool(NAME, DAY, 2 * DAY, NOW)
    leaf = new_leaf(NAME, ca, NOW, NOW + 30 * DAY)
    assert read_cert(leaf.cert).not_after == NOW + 2 * DAY


def test_two_cas_of_one_pool_have_distinct_subjects() -> None:
    a, b = issue_pool(NAME, DAY, 2 * DAY, NOW)[0], issue_pool(NAME, DAY, 2 * DAY, NOW)[0]
    assert read_cert(a.cert).subject != read_cert(b.cert).subject


def test_bundle_split_and_read() -> None:
    a, b = issue_pool(NAME, DAY, 2 * DAY, NOW)[0], issue_pool(NAME, DAY, 2 * DAY, NOW)[0]
    assert split_pem(b"junk\n" + a.cert + b.cert) == [a.cert, b.cert]
    assert [c.pem for c in read_bundle(a.cert + b.cert)] == [a.cert, b.cert]
    with pytest.raises(ValueError, match="no PEM certificate"):
        read_bundle(b"nothing")


def test_write_dir_swaps_data_like_the_kubelet(tmp_path) -> None:
    ca, leaf = issue_pool(NAME, DAY, 2 * DAY, NOW)
    write_dir(str(tmp_path), ca.cert, leaf)
    first = os.readlink(tmp_path / "..data")
    assert os.readlink(tmp_path / "tls.crt") == "..data/tls.crt"
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0
    ca2, leaf2 = issue_pool(NAME, DAY, 2 * DAY, NOW)
    write_dir(str(tmp_path), ca2.cert, leaf2)
    assert os.readlink(tmp_path / "..data") != first
    assert not (tmp_path / first).exists()  # the old set is removed after the swap
    assert load_material(str(tmp_path)) == (ca2.cert, leaf2.cert, leaf2.key)


def test_load_material_names_what_does_not_belong(tmp_path) -> None:
    ca, leaf = issue_pool(NAME, DAY, 2 * DAY, NOW)
    _, other_leaf = issue_pool(NAME, DAY, 2 * DAY, NOW)
    write_dir(str(tmp_path), ca.cert, other_leaf)
    with pytest.raises(ValueError, match="tls.crt: signed by none of the 1 CA"):
        load_material(str(tmp_path))
    write_dir(str(tmp_path), ca.cert, Pem(leaf.cert, other_leaf.key))
    with pytest.raises(ValueError, match="tls.key: not the private key"):
        load_material(str(tmp_path))
    with pytest.raises(ValueError, match="--tls-dir .*: .*No such file"):
        TlsFiles(str(tmp_path / "missing"))


def test_tls_files_reload_on_change_and_keep_the_last_good_set(tmp_path, capsys) -> None:
    ca, leaf = issue_pool(NAME, DAY, 2 * DAY, NOW)
    write_dir(str(tmp_path), ca.cert, leaf)
    files = TlsFiles(str(tmp_path))
    assert files.server_name == NAME and files.current().generation == 1
    assert files.channel_options() == [("grpc.ssl_target_name_override", NAME)]
    assert TlsFiles(str(tmp_path), "explicit.name").server_name == "explicit.name"
    ca2 = issue_pool(NAME, DAY, 2 * DAY, NOW)[0]
    write_dir(str(tmp_path), ca.cert + ca2.cert, leaf)  # the first step of a CA rotation
    m = files.current()
    assert (m.generation, m.cas, m.ca) == (2, 2, ca.cert + ca2.cert)
    assert files.current() is m  # nothing changed since: no reload
    write_dir(str(tmp_path), ca2.cert, leaf)  # inconsistent: leaf is from the old CA
    assert files.current() is m
    assert "keeping the certificate loaded before" in capsys.readouterr().err
    leaf2 = new_leaf(NAME, ca2, NOW, NOW + DAY)
    write_dir(str(tmp_path), ca2.cert, leaf2)
    assert files.current().generation == 3 and files.current().cert == leaf2.cert


def test_channel_cache_makes_new_channels_after_a_change(tmp_path) -> None:
    ca, leaf = issue_pool(NAME, DAY, 2 * DAY, NOW)
    write_dir(str(tmp_path), ca.cert, leaf)
    cache = ChannelCache(TlsFiles(str(tmp_path)), retire_s=0.0)
    try:
        first = cache.get("127.0.0.1:1")
        assert cache.get("127.0.0.1:1") is first
        write_dir(str(tmp_path), ca.cert, new_leaf(NAME, ca, NOW, NOW + DAY))
        second = cache.get("127.0.0.1:1")
        assert second is not first
        assert cache.get("127.0.0.1:1") is second  # the retired one was closed meanwhile
    finally:
        cache.close()
    plain = ChannelCache(None)
    assert plain.get("127.0.0.1:1") is plain.get("127.0.0.1:1")
    plain.close()
