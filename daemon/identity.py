"""This device's identity: an Ed25519 key and a self-signed certificate for it.

Created on the first start and kept under ``<home>``; the key file is mode 0600.
The certificate is self-signed with ``BasicConstraints(ca=True)`` because peers pin it
as the only trust anchor for this device (OpenSSL then accepts it as its own issuer).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from dizzy.protocol.errors import DizzyError
from dizzy.protocol.ids import DeviceId

KEY_FILE = "device-key.pem"
CERT_FILE = "device-cert.pem"
#: long enough that users never meet an expiry; trust is pinning, not dates
CERT_VALIDITY = datetime.timedelta(days=365 * 30)


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    cert_pem: bytes
    key_path: Path
    cert_path: Path

    @property
    def public_key_raw(self) -> bytes:
        return raw_public_key(self.private_key.public_key())

    @property
    def device_id(self) -> DeviceId:
        return DeviceId.from_public_key(self.public_key_raw)


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def device_id_of_cert(cert_bytes: bytes) -> DeviceId:
    """Device ID of a certificate given as PEM or DER; only Ed25519 keys qualify."""
    cert = (
        x509.load_pem_x509_certificate(cert_bytes)
        if cert_bytes.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(cert_bytes)
    )
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise DizzyError("peer certificate does not carry an Ed25519 key")
    return DeviceId.from_public_key(raw_public_key(key))


def _make_cert(key: Ed25519PrivateKey, now: datetime.datetime) -> bytes:
    device = DeviceId.from_public_key(raw_public_key(key.public_key()))
    # CN is at most 64 characters: the short ID; the key itself is the identity.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dizzy {device.short}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, None)  # Ed25519 signs without a separate digest
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def load_or_create_identity(home: Path) -> Identity:
    """Load ``<home>``'s identity, creating key and certificate on first use."""
    key_path = home / KEY_FILE
    cert_path = home / CERT_FILE
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise DizzyError(f"{key_path} is not an Ed25519 key")
        if not cert_path.exists():
            _write_private(cert_path, _make_cert(key, _now()), 0o644)
        return Identity(key, cert_path.read_bytes(), key_path, cert_path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, pem, 0o600)
    cert_pem = _make_cert(key, _now())
    _write_private(cert_path, cert_pem, 0o644)
    return Identity(key, cert_pem, key_path, cert_path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def sign_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER certificate, for log lines."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def public_key_of_cert(cert_pem: bytes) -> bytes:
    """The raw Ed25519 public key a (pinned) certificate carries."""
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise DizzyError("certificate does not carry an Ed25519 key")
    return raw_public_key(key)
