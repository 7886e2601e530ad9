"""TLS contexts for the peer transport: TLS 1.3, mutual authentication, pinned trust.

Trust is pinning.  The trust store holds exactly the paired devices' self-signed
certificates (each is its own CA, see ``identity``), nothing from the system store, and
both sides require a certificate.  An unpaired device therefore fails the handshake
inside OpenSSL; this module never decides trust in Python.  Host names mean nothing
here (peers are found by mDNS or typed addresses), so hostname checking is off and the
device ID from the verified certificate is what identifies the peer.

Callers rebuild the contexts whenever pairing changes.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Literal, Protocol

from dizzy.protocol.errors import DizzyError
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.peer_wire import PeerRefused

from .identity import Identity, device_id_of_cert


class _HasPeerCert(Protocol):
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...


def make_server_context(identity: Identity, trusted_cert_pems: Iterable[bytes]) -> ssl.SSLContext:
    """Context for the listening side; refuses every client not in ``trusted_cert_pems``."""
    return _make_context(True, identity, trusted_cert_pems)


def make_client_context(identity: Identity, trusted_cert_pems: Iterable[bytes]) -> ssl.SSLContext:
    """Context for the dialing side; refuses every server not in ``trusted_cert_pems``."""
    return _make_context(False, identity, trusted_cert_pems)


def peer_device_id(ssl_object: _HasPeerCert) -> DeviceId:
    """The device ID of the (already verified) certificate the peer presented."""
    der = ssl_object.getpeercert(True)
    if not der:
        # Unreachable with CERT_REQUIRED after a finished handshake; guard anyway so a
        # misuse cannot yield an unauthenticated peer.
        raise PeerRefused("peer presented no certificate")
    return device_id_of_cert(der)


#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (ssl has no name for it)
_X509_V_FLAG_NO_CHECK_TIME = 0x200000


def _make_context(
    server_side: bool, identity: Identity, trusted_cert_pems: Iterable[bytes]
) -> ssl.SSLContext:
    pems = _validated_pems(trusted_cert_pems)
    if not pems:
        # OpenSSL with an empty store would refuse everyone too, but only as a side
        # effect; no paired devices is a state we name, not one we discover.
        raise PeerRefused("no paired devices: refusing every peer connection")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # before verify_mode: a client context insists otherwise
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Trust is the pinned certificate itself (unpair revokes it), so its validity dates
    # prove nothing, and checking them against our clock locked out a device whose
    # clock is days off (a board without a battery-backed clock before NTP): pairing
    # worked, then every handshake failed as "certificate is not yet valid".
    ctx.verify_flags |= _X509_V_FLAG_NO_CHECK_TIME
    if server_side:
        # We never resume sessions (every connection re-proves its identity against the
        # current pairing), so tickets would only cost bytes and a round of writes.
        ctx.num_tickets = 0
    ctx.load_cert_chain(certfile=identity.cert_path, keyfile=identity.key_path)
    ctx.load_verify_locations(cadata=b"".join(pems).decode("ascii"))
    return ctx


def _validated_pems(trusted_cert_pems: Iterable[bytes]) -> list[bytes]:
    pems: list[bytes] = []
    for pem in trusted_cert_pems:
        try:
            device_id_of_cert(pem)
        except (ValueError, DizzyError) as exc:
            raise DizzyError(f"a paired device's certificate is unusable: {exc}") from exc
        if not pem.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
            raise DizzyError("paired device certificates must be PEM")
        pems.append(pem.strip() + b"\n")
    return pems
