"""The paired devices: whom we trust, with the certificate we pin for each.

Persisted in the index's ``peers`` table and mirrored in memory, because every TLS
handshake needs the whole list.  ``version`` grows on every change so the peer manager
knows when to rebuild its TLS contexts and drop connections of unpaired devices.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

import trio

from dizzy.protocol.errors import StorageError
from dizzy.protocol.ids import DeviceId

from .index import Index

log = logging.getLogger("dizzy.trust")


@dataclass
class TrustedPeer:
    device_id: DeviceId
    name: str
    cert_pem: bytes
    address: str | None
    last_seen: float | None
    paired_at: float


class TrustStore:
    def __init__(self, index: Index, peers: dict[DeviceId, TrustedPeer]) -> None:
        self.index = index
        self._peers = peers
        self.version = 0
        self.changed = trio.Event()

    @classmethod
    async def load(cls, index: Index) -> TrustStore:
        def q(conn: sqlite3.Connection) -> list[tuple[str, str, bytes, str | None, float | None,
                                                      float]]:
            return conn.execute(
                "SELECT device_id, name, cert_pem, address, last_seen, paired_at FROM peers"
            ).fetchall()

        peers = {}
        for dev, name, pem, address, last_seen, paired_at in await index.call(q):
            device = DeviceId.parse(dev)
            peers[device] = TrustedPeer(device, name, bytes(pem), address, last_seen, paired_at)
        return cls(index, peers)

    def _bump(self) -> None:
        self.version += 1
        self.changed.set()
        self.changed = trio.Event()

    def get(self, device: DeviceId) -> TrustedPeer | None:
        return self._peers.get(device)

    def all(self) -> list[TrustedPeer]:
        return sorted(self._peers.values(), key=lambda p: (p.name, str(p.device_id)))

    def cert_pems(self) -> list[bytes]:
        return [p.cert_pem for p in self._peers.values()]

    async def add(self, device: DeviceId, name: str, cert_pem: bytes,
                  address: str | None = None) -> None:
        now = time.time()
        peer = TrustedPeer(device, name, cert_pem, address, None, now)

        def q(conn: sqlite3.Connection) -> None:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO peers (device_id, name, cert_pem, address, "
                    "last_seen, paired_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (str(device), name, cert_pem, address, None, now),
                )

        await self.index.call(q)
        self._peers[device] = peer
        self._bump()

    async def remove(self, device: DeviceId) -> bool:
        if device not in self._peers:
            return False
        await self.index.execute("DELETE FROM peers WHERE device_id = ?", (str(device),))
        del self._peers[device]
        self._bump()
        return True

    async def seen(self, device: DeviceId, address: str | None) -> None:
        peer = self._peers.get(device)
        if peer is None:
            return
        peer.last_seen = time.time()
        if address:
            peer.address = address
        try:
            await self.index.execute(
                "UPDATE peers SET last_seen = ?, address = COALESCE(?, address) "
                "WHERE device_id = ?", (peer.last_seen, address, str(device)),
            )
        except StorageError as exc:  # bookkeeping only: a full disk must not cut the link
            log.warning("could not record when %s was seen: %s", device.short, exc)
