"""Control handlers for peers: pair, peers, unpair."""

from __future__ import annotations

from typing import Any

from dizzy.protocol.errors import NotFound, UsageError
from dizzy.protocol.ids import DeviceId
from dizzy.protocol.pairing_code import parse as parse_code

from .api import Call, ControlApi
from .context import DaemonContext
from .pairing_service import DEFAULT_INVITE_TIMEOUT, DEFAULT_JOIN_TIMEOUT, PairingService
from .peers import PeerManager
from .trust import TrustStore

#: a pairing invitation is kept open at most this long, whatever was asked
MAX_INVITE_TIMEOUT = 24 * 3600.0


def _timeout(call: Call, default: float) -> float:
    value = call.param("timeout", (int, float), default=default, allow_none=True)
    if value is None:
        return default
    if not 0 < float(value) <= MAX_INVITE_TIMEOUT:
        raise UsageError(f"timeout must be between 0 and {MAX_INVITE_TIMEOUT:g} seconds")
    return float(value)


def register(api: ControlApi, ctx: DaemonContext, trust: TrustStore, peers: PeerManager,
             pairing: PairingService) -> None:
    async def pair_invite(call: Call) -> dict[str, Any]:
        timeout = _timeout(call, DEFAULT_INVITE_TIMEOUT)
        result = await pairing.invite(timeout, lambda code: call.send_notice("code", code))
        return {"device_id": str(result.peer_device_id), "name": result.peer_name}

    async def pair_join(call: Call) -> dict[str, Any]:
        code = parse_code(call.param("code", str))
        timeout = _timeout(call, DEFAULT_JOIN_TIMEOUT)
        address = call.param("address", list, default=None, allow_none=True)
        target: tuple[str, int] | None = None
        if address is not None:
            if len(address) != 2 or not isinstance(address[0], str) or not isinstance(
                address[1], int
            ):
                raise UsageError("address must be [host, port]")
            target = (address[0], address[1])
        result = await pairing.join(code, target, timeout)
        return {"device_id": str(result.peer_device_id), "name": result.peer_name}

    async def list_peers(call: Call) -> dict[str, Any]:
        nearby = []
        discovery = ctx.services.get("discovery")
        if discovery is not None:
            for seen in discovery.table.peers.values():
                if trust.get(seen.device_id) is None:
                    nearby.append({
                        "id": str(seen.device_id),
                        "name": seen.name,
                        "addresses": [f"{h}:{p}" for h, p in seen.addresses],
                        "pairing": seen.nameplate is not None,
                    })
        return {"paired": peers.describe(), "nearby": nearby}

    async def unpair(call: Call) -> dict[str, Any]:
        device = DeviceId.parse(call.param("id", str))
        if not await trust.remove(device):
            raise NotFound(f"device {device} is not paired")
        ctx.events.publish("peer.unpaired", device_id=str(device))
        await peers.disconnect(device, "unpaired")
        return {"device_id": str(device)}

    api.register("pair_invite", pair_invite)
    api.register("pair_join", pair_join)
    api.register("peers", list_peers)
    api.register("unpair", unpair)
