"""Text a hostile paired device controls never reaches the user's terminal raw.

Error texts from a peer (and names of its files) may hold newlines and escape sequences;
the CLI's promise is one line on stderr, and a terminal must not obey a peer's escape
codes.  Uses the world of test_hostile_peer.py.
"""

from __future__ import annotations

import random

import pytest
import trio

from dizzy.daemon.transport import PeerConnection
from dizzy.protocol.outboard import outboard_of
from dizzy.protocol.peer_wire import ErrorResponse, Request, Response
from tests.multi.test_hostile_peer import (
    MB,
    TEST_DEADLINE,
    World,
    as_hostile,
    in_thread,
    victim_status_ok,
    world,
)

__all__ = ["world"]  # the module-scoped fixture, shared with test_hostile_peer

pytestmark = pytest.mark.timeout(90)

EVIL = "gone\n\x1b[2J\x1b]0;pwned\x07dizzy: all good\r\x9b31m"


async def test_peer_error_text_is_one_harmless_line(world: World) -> None:
    with trio.fail_after(TEST_DEADLINE):
        data = random.Random(99).randbytes(MB)
        object_id = outboard_of(data).object_id

        async def serve(conn: PeerConnection) -> None:
            async for message in conn:
                if not isinstance(message, Request):
                    continue
                if message.kind == "obj.stat" and message.body.get("id") == object_id:
                    reply: Response | ErrorResponse = Response(
                        message.id, {"have": True, "kind": "blob", "size": len(data)})
                else:
                    reply = ErrorResponse(message.id, "not-found", EVIL)
                await conn.send(reply)

        async with as_hostile(world) as conn, trio.open_nursery() as nursery:
            nursery.start_soon(serve, conn)
            proc = await in_thread(lambda: world.victim.cli(
                "get", object_id, "-o", str(world.tmp / "evil-out"), "--timeout", "20",
                timeout=40.0))
            nursery.cancel_scope.cancel()
        err = proc.stderr.decode(errors="replace")
        print(f"\n  stderr: {err!r}")
        assert proc.returncode != 0
        assert err.count("\n") == 1 and err.endswith("\n") and err.startswith("dizzy: "), err
        body = err[:-1]
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in body), err
        await in_thread(victim_status_ok, world)
