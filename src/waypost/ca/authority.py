"""A SPIFFE certificate authority: a self-signed root that issues Istio-style workload certificates.

Workload certificates look like the ones istiod's CA signs (security/pkg/pki/util/generate_cert.go): EC P-256,
an empty subject, a single URI SAN `spiffe://<trust domain>/ns/<ns>/sa/<sa>` marked critical because the subject
is empty (RFC 5280 §4.2.1.6), EKU serverAuth+clientAuth, keyUsage digitalSignature+keyEncipherment, CA:FALSE.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Istio's file names for a plugged-in root (samples/certs, `cacerts` secret).
ROOT_CERT_FILE = "root-cert.pem"
ROOT_KEY_FILE = "root-key.pem"

# Certificates start 5 minutes in the past so a peer whose clock runs slightly behind still accepts them.
CLOCK_SKEW = timedelta(minutes=5)

# A DNS-like trust domain and Kubernetes-style namespace / service account names.
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-_]*[a-z0-9])?$")
_SEGMENT = r"[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?"
_SPIFFE_PATH = re.compile(rf"^/ns/(?P<ns>{_SEGMENT})/sa/(?P<sa>{_SEGMENT})$")


@dataclass(frozen=True)
class IssuedCertificate:
    spiffe_id: str
    cert_chain_pem: str  # the leaf only; Envoy gets the root separately as its validation context
    private_key_pem: str
    not_after: datetime


@dataclass(frozen=True)
class CertificateAuthority:
    trust_domain: str
    root_cert_pem: str
    _root_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)

    @classmethod
    def generate(
        cls,
        trust_domain: str = "cluster.local",
        *,
        now: datetime | None = None,
        ttl: timedelta = timedelta(days=365),
    ) -> CertificateAuthority:
        """A fresh self-signed root: EC P-256, subject O=<trust domain>, CA:TRUE (critical)."""
        if not _TRUST_DOMAIN.match(trust_domain):
            raise ValueError(f"invalid trust domain {trust_domain!r}: expected a lowercase DNS-like name")
        now = _utc(now)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, cert.public_bytes(serialization.Encoding.PEM).decode(), key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Read root-cert.pem and root-key.pem; the trust domain is the root's O= attribute."""
        directory = Path(directory)
        cert_pem = (directory / ROOT_CERT_FILE).read_text()
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key((directory / ROOT_KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / ROOT_KEY_FILE}: expected an EC private key, got {type(key).__name__}")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            raise ValueError(f"{directory}: {ROOT_KEY_FILE} does not belong to {ROOT_CERT_FILE}")
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if not orgs:
            raise ValueError(f"{directory / ROOT_CERT_FILE}: root subject has no O= (trust domain)")
        return cls(str(orgs[0].value), cert_pem, key)

    def save(self, directory: Path) -> None:
        """Write root-cert.pem and root-key.pem (the key readable by the owner only)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ROOT_CERT_FILE).write_text(self.root_cert_pem)
        key_path = directory / ROOT_KEY_FILE
        key_pem = self._root_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Created 0600 rather than chmod-ed after writing, so the key is never briefly world-readable.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        os.chmod(key_path, 0o600)  # an existing file keeps its old mode through O_CREAT

    def issue(
        self, spiffe_id: str, *, ttl: timedelta = timedelta(hours=24), now: datetime | None = None
    ) -> IssuedCertificate:
        """Sign a workload certificate for `spiffe://<trust domain>/ns/<ns>/sa/<sa>`."""
        self._check_spiffe_id(spiffe_id)
        now = _utc(now)
        root = x509.load_pem_x509_certificate(self.root_cert_pem.encode())
        # A leaf outliving its root would fail verification early and surprisingly; end it with the root.
        not_after = min(now + ttl, root.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._root_key.public_key()), critical=False
            )
            .sign(self._root_key, hashes.SHA256())
        )
        return IssuedCertificate(
            spiffe_id=spiffe_id,
            cert_chain_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            not_after=not_after,
        )

    def _check_spiffe_id(self, spiffe_id: str) -> None:
        prefix = f"spiffe://{self.trust_domain}"
        expected = f"{prefix}/ns/<namespace>/sa/<service account>"
        if not spiffe_id.startswith("spiffe://"):
            raise ValueError(f"invalid SPIFFE id {spiffe_id!r}: expected {expected}")
        if not spiffe_id.startswith(prefix + "/"):
            raise ValueError(
                f"invalid SPIFFE id {spiffe_id!r}: this CA signs only trust domain {self.trust_domain!r} ({expected})"
            )
        if not _SPIFFE_PATH.match(spiffe_id[len(prefix) :]):
            raise ValueError(f"invalid SPIFFE id {spiffe_id!r}: expected {expected}")

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"CertificateAuthority(trust_domain={self.trust_domain!r})"


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(timezone.utc)
