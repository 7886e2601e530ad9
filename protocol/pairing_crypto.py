"""The few pure crypto functions pairing needs, on top of the SPAKE2 key.

Following magic-wormhole: every use of the PAKE key gets its own key, derived with
HKDF-SHA256 and a purpose label, so no key serves two purposes or two directions.
Each derived sealing key encrypts exactly one message, which is why a fixed nonce
per key (a counter starting at 0) is safe.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import RemoteProtocolError

#: namespaces every label, so keys never collide with another protocol's HKDF use
LABEL_PREFIX: Final = b"dizzy-pairing-v1/"
KEY_LEN: Final = 32
MAC_LEN: Final = 32
_NONCE_LEN: Final = 12


def derive_key(pake_key: bytes, purpose: str, length: int = KEY_LEN) -> bytes:
    """A key for one purpose (e.g. ``"confirm/joiner"``), independent of all others."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None,
                info=LABEL_PREFIX + purpose.encode("ascii"))
    return hkdf.derive(pake_key)


def transcript_hash(*parts: bytes) -> bytes:
    """SHA-256 of length-prefixed parts: unambiguous, so no two transcripts collide."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(struct.pack(">I", len(part)))
        digest.update(part)
    return digest.digest()


def confirmation_mac(pake_key: bytes, purpose: str, transcript: bytes) -> bytes:
    """Proof that the sender holds ``pake_key``, bound to this exchange's transcript."""
    return hmac.new(derive_key(pake_key, purpose), transcript, hashlib.sha256).digest()


def confirmation_ok(pake_key: bytes, purpose: str, transcript: bytes, mac: bytes) -> bool:
    # Constant-time compare: timing must not tell a forger how many bytes matched.
    return hmac.compare_digest(confirmation_mac(pake_key, purpose, transcript), mac)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(_NONCE_LEN, "big")


def seal(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt and authenticate; ``counter`` must never repeat under one ``key``."""
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, aad)


def open_sealed(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt what ``seal`` made, or raise ``RemoteProtocolError`` if it was altered."""
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), ciphertext, aad)
    except InvalidTag:
        raise RemoteProtocolError("sealed pairing message failed authentication") from None
