"""A hostile paired device tries to make the victim hold its bytes: memory stays bounded.

Uses the hostile-peer world of test_hostile_peer.py (victim V, friend F, the test process
as the paired hostile device H).
"""

from __future__ import annotations

from contextlib import suppress

import pytest
import trio

from dizzy.protocol.framing import PEER_MAX_FRAME, encode_frame
from dizzy.protocol.peer_wire import MAX_REQUESTS_IN_FLIGHT, Request
from tests.multi.fetch_helpers import full_log, has_outboard, make_random_file, pid, put, wait_until
from tests.multi.test_hostile_peer import (
    MB,
    RSS_LIMIT,
    TEST_DEADLINE,
    World,
    as_hostile,
    closed_by_victim,
    friend_can_get,
    in_thread,
    send_raw,
    victim_status_ok,
    vm_rss,
    world,
)

__all__ = ["world"]  # the module-scoped fixture, shared with test_hostile_peer

pytestmark = pytest.mark.timeout(90)

#: just under the peer frame limit: the most one request can make the victim buffer
BIG_PAD = PEER_MAX_FRAME - 4096


async def test_big_unread_requests_do_not_pile_up(world: World) -> None:
    """256 requests in flight (the protocol's limit), each padded to ~5 MiB, while H does
    not read the replies.  V used to keep every one (peak 1.36 GB); now a request over
    MAX_REQUEST_FRAME (64 KiB) is a protocol error that costs H the link."""
    with trio.fail_after(TEST_DEADLINE + 30):
        src = world.tmp / "pad-object"
        await in_thread(lambda: make_random_file(src, 64 * MB, seed=b"pad"))
        object_id = await in_thread(put, world.victim, src)
        await in_thread(wait_until, lambda: has_outboard(world.victim.home, object_id), 20.0,
                        "the victim to chunk the object")
        victim_pid = pid(world.victim)
        before = vm_rss(victim_pid)
        peak = before
        async with as_hostile(world) as conn:
            pad = b"\x00" * BIG_PAD
            sent = 0
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                for k in range(MAX_REQUESTS_IN_FLIGHT):
                    frame = encode_frame(Request(50_000 + k, "obj.chunk",
                                                 {"id": object_id, "i": k % 60, "pad": pad}
                                                 ).to_wire(), PEER_MAX_FRAME)
                    with trio.move_on_after(5.0):
                        await send_raw(conn, frame)
                        sent += 1
                    peak = max(peak, vm_rss(victim_pid))
            for _ in range(20):
                await trio.sleep(0.1)
                peak = max(peak, vm_rss(victim_pid))
            await closed_by_victim(conn)  # the first oversized request costs H its link
        print(f"\n  big requests: sent {sent}, victim VmRSS before {before / MB:.0f} MB, "
              f"peak {peak / MB:.0f} MB")
        assert peak < RSS_LIMIT, f"victim reached {peak / MB:.0f} MB"
        assert "limit" in await in_thread(full_log, world.victim)
        await in_thread(victim_status_ok, world)
        await in_thread(friend_can_get, world)
