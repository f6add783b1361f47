"""The CA issues Istio-style SPIFFE workload certificates (spec/envoy-dataplane.md §0 "The certs")."""

from __future__ import annotations

import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from waypost.ca import CertificateAuthority, IssuedCertificate

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(now=NOW)


@pytest.fixture(scope="module")
def issued(ca: CertificateAuthority) -> IssuedCertificate:
    return ca.issue(SLEEP, now=NOW)


def _leaf(issued: IssuedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(issued.cert_chain_pem.encode())


def _root(ca: CertificateAuthority) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.root_cert_pem.encode())


def test_root_is_a_self_signed_p256_ca_named_after_the_trust_domain(ca):
    root = _root(ca)
    constraints = root.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert constraints.critical and constraints.value.ca
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "cluster.local"
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey) and root.public_key().curve.name == "secp256r1"
    root.verify_directly_issued_by(root)


def test_workload_cert_has_only_a_critical_uri_san_and_an_empty_subject(issued):
    leaf = _leaf(issued)
    assert len(leaf.subject) == 0
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(SLEEP)]


def test_workload_cert_is_a_p256_leaf_for_server_and_client_auth(issued):
    leaf = _leaf(issued)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) and leaf.public_key().curve.name == "secp256r1"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_workload_cert_chain_is_the_leaf_alone_and_verifies_against_the_root(ca, issued):
    assert issued.cert_chain_pem.count("BEGIN CERTIFICATE") == 1
    _leaf(issued).verify_directly_issued_by(_root(ca))


def test_private_key_matches_the_certificate(issued):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(issued.private_key_pem.encode(), password=None)
    assert key.public_key().public_numbers() == _leaf(issued).public_key().public_numbers()


def test_validity_is_backdated_five_minutes_and_lasts_the_ttl(ca):
    issued = ca.issue(SLEEP, ttl=timedelta(hours=2), now=NOW)
    leaf = _leaf(issued)
    assert leaf.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert leaf.not_valid_after_utc == NOW + timedelta(hours=2) == issued.not_after


@pytest.mark.parametrize(
    "bad",
    [
        "sleep",
        "https://cluster.local/ns/default/sa/sleep",
        "spiffe://other.domain/ns/default/sa/sleep",
        "spiffe://cluster.local/ns/default",
        "spiffe://cluster.local/ns//sa/sleep",
        "spiffe://cluster.local/sa/sleep/ns/default",
        "spiffe://cluster.local/ns/default/sa/sleep/extra",
        "spiffe://cluster.local.evil/ns/default/sa/sleep",
    ],
)
def test_malformed_or_foreign_spiffe_ids_are_rejected(ca, bad):
    with pytest.raises(ValueError, match="SPIFFE id"):
        ca.issue(bad, now=NOW)


def test_save_then_load_round_trips_and_keeps_the_key_private(ca, tmp_path):
    ca.save(tmp_path)
    assert stat.S_IMODE((tmp_path / "root-key.pem").stat().st_mode) == 0o600
    loaded = CertificateAuthority.load(tmp_path)
    assert loaded.trust_domain == ca.trust_domain
    assert loaded.root_cert_pem == ca.root_cert_pem
    _leaf(loaded.issue(SLEEP, now=NOW)).verify_directly_issued_by(_root(ca))


def test_load_rejects_a_key_that_does_not_match_the_root(ca, tmp_path):
    ca.save(tmp_path)
    CertificateAuthority.generate(now=NOW).save(tmp_path / "other")
    (tmp_path / "root-key.pem").write_bytes((tmp_path / "other" / "root-key.pem").read_bytes())
    with pytest.raises(ValueError, match="does not belong"):
        CertificateAuthority.load(tmp_path)


def test_other_trust_domain_is_carried_into_root_and_ids():
    ca = CertificateAuthority.generate("example.org", now=NOW)
    assert _root(ca).subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "example.org"
    ca.issue("spiffe://example.org/ns/a/sa/b", now=NOW)
    with pytest.raises(ValueError, match="example.org"):
        ca.issue(SLEEP, now=NOW)


def test_repr_does_not_leak_the_root_key(ca):
    assert "PRIVATE" not in repr(ca) and "_root_key" not in repr(ca)
