"""The mesh's certificate authority: SPIFFE workload identities for Envoy's mTLS."""

from waypost.ca.authority import CertificateAuthority, IssuedCertificate

__all__ = ["CertificateAuthority", "IssuedCertificate"]
