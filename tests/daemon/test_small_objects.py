"""Small objects in batches (obj.smalls): splitting, the serve budget, verification.

Real ObjectStore and SQLite index on a temp home; the peer is a fake link object that
answers ``request`` the way a (possibly lying) peer would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import pytest

from dizzy.daemon.folder_sync import small_batches
from dizzy.daemon.home import Home
from dizzy.daemon.index import Index
from dizzy.daemon.object_service import SMALL_OBJECT_MAX
from dizzy.daemon.small_objects import (
    BATCH_MAX_BYTES,
    BATCH_MAX_IDS,
    obtain_batch,
    parse_batch_ids,
    read_batch,
)
from dizzy.daemon.store import ObjectStore
from dizzy.protocol.errors import DizzyError, UsageError
from dizzy.protocol.folder_state import Fetch
from dizzy.protocol.ids import DeviceId


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ObjectStore]:
    home = Home(tmp_path / "home")
    home.create()
    index = Index.open(home.index_db)
    s = ObjectStore(home, index)
    yield s
    s.close()
    index.close()


def oid(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@dataclass
class FakeEntry:
    size: int
    object_id: str = "0" * 64


def fetch(size: int) -> Fetch:
    return Fetch("p", FakeEntry(size))  # type: ignore[arg-type]


def test_batches_split_by_count_and_by_bytes() -> None:
    many = [fetch(10) for _ in range(BATCH_MAX_IDS * 2 + 1)]
    assert [len(b) for b in small_batches(many)] == [BATCH_MAX_IDS, BATCH_MAX_IDS, 1]
    big = [fetch(SMALL_OBJECT_MAX) for _ in range(40)]
    batches = small_batches(big)
    assert all(sum(a.entry.size for a in b) <= BATCH_MAX_BYTES for b in batches)
    assert sum(len(b) for b in batches) == 40
    assert [a for b in batches for a in b] == big  # plan order kept
    assert small_batches([]) == []


def test_request_ids_are_validated() -> None:
    good = oid(b"x")
    assert parse_batch_ids([good]) == [good]
    for bad in (None, [], "abc", [1], [good] * (BATCH_MAX_IDS + 1), ["zz"]):
        with pytest.raises(DizzyError):
            parse_batch_ids(bad)
    with pytest.raises(UsageError):
        parse_batch_ids({"ids": good})


def test_serve_side_gives_what_it_has_within_its_budget(store: ObjectStore) -> None:
    blobs = [os.urandom(SMALL_OBJECT_MAX) for _ in range(BATCH_MAX_BYTES // SMALL_OBJECT_MAX
                                                           + 2)]
    ids = [store.sync_put_bytes(b, "blob") for b in blobs]
    absent = oid(b"nobody has this")
    too_big = store.sync_put_bytes(os.urandom(SMALL_OBJECT_MAX + 1), "blob")
    out = read_batch(store, None, [absent, too_big, *ids])
    assert out[0] is None and out[1] is None
    served = [d for d in out[2:] if d is not None]
    assert served == blobs[: len(served)]  # in request order, each whole
    assert sum(map(len, served)) <= BATCH_MAX_BYTES
    assert out[-1] is None  # past the budget: the receiver asks again


@dataclass
class FakeLink:
    answer: Any
    device_id: DeviceId = field(default_factory=lambda: DeviceId(b"\x01" * 32))
    asked: int = 0

    async def request(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        assert kind == "obj.smalls"
        self.asked += 1
        result: dict[str, Any] = self.answer(body["ids"])
        return result


async def test_receive_side_verifies_and_falls_through_liars(store: ObjectStore,
                                                             tmp_path: Path) -> None:
    data = {oid(b): b for b in (b"alpha", b"beta", b"gamma")}
    ids = list(data)
    local = store.sync_put_bytes(b"already here", "blob")
    dests = {i: tmp_path / f"out-{n}" for n, i in enumerate([*ids, local])}

    liar = FakeLink(lambda asked: {"data": [b"\0" * 5 for _ in asked]})
    short = FakeLink(lambda asked: {"data": [None]})  # malformed: wrong length
    partial = FakeLink(lambda asked: {"data": [data[i] if i != ids[2] else None
                                               for i in asked]})
    written = await obtain_batch(store, lambda _i: None, [liar, short, partial],  # type: ignore[list-item]
                                 list(dests.items()))
    assert written == {dests[ids[0]], dests[ids[1]], dests[local]}
    assert dests[ids[0]].read_bytes() == b"alpha"
    assert dests[local].read_bytes() == b"already here"  # a local copy, no request for it
    assert not dests[ids[2]].exists()  # nobody gave it: the caller fetches it alone
    assert (liar.asked, short.asked, partial.asked) == (1, 1, 1)


async def test_receive_side_sets_mode_and_mtime_on_what_it_writes(store: ObjectStore,
                                                                   tmp_path: Path) -> None:
    fetched, local = b"from a peer", b"a local copy"
    local_id = store.sync_put_bytes(local, "blob")
    dests = {oid(fetched): tmp_path / "fetched", local_id: tmp_path / "copied"}
    finish = {tmp_path / "fetched": (0o640, 1_600_000_000_123_456_789),
              tmp_path / "copied": (0o755, 1_500_000_000_000_000_000)}
    peer = FakeLink(lambda asked: {"data": [fetched if i == oid(fetched) else None
                                            for i in asked]})
    written = await obtain_batch(store, lambda _i: None, [peer],  # type: ignore[list-item]
                                 list(dests.items()), finish)
    assert written == set(finish)
    for path, (mode, mtime_ns) in finish.items():
        st = path.stat()
        assert (st.st_mode & 0o7777, st.st_mtime_ns) == (mode, mtime_ns)
