"""``dizzy events --json`` between two real daemons on loopback: a peer coming online,
a fetch's start, progress and end, folder states, a peer going offline.

Both daemons run with ``--no-mdns`` on 127.0.0.1 (``fetch_helpers.cluster``).  Every
wait reads the events process's output against a deadline.
"""

from __future__ import annotations

from pathlib import Path

from tests.event_lines import popen
from tests.multi.fetch_helpers import cluster, file_blake3, full_log, make_random_file, put

MB = 1024 * 1024
#: a 24 MiB loopback fetch takes well under a second; this bounds a loaded machine
TRANSFER_TIMEOUT = 60.0
#: a peer's loss is noticed at once when its daemon stops cleanly
OFFLINE_TIMEOUT = 15.0


def test_events_show_a_fetch_peers_and_folders(tmp_path: Path) -> None:
    size = 24 * MB
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        a_id = a.device_id()
        # --since 0: everything b's daemon still holds, then live events.
        watch = popen(b.home, "events", "--json", "--since", "0")
        try:
            watch.until(lambda s: '"peer.online"' in s and a_id in s, "a online")
            source = make_random_file(tmp_path / "big.bin", size, seed=b"events")
            object_id = put(a, source)
            out = tmp_path / "big.out"
            got = b.cli("get", object_id, "-o", str(out), timeout=TRANSFER_TIMEOUT)
            assert got.returncode == 0, (got.stderr, b.log())
            assert file_blake3(out) == object_id
            watch.until(lambda s: '"transfer.finished"' in s and object_id in s,
                        "transfer.finished")
            mine = [e for e in watch.events() if e["data"].get("object_id") == object_id]
            kinds = [e["type"] for e in mine]
            assert kinds[0] == "transfer.started" and kinds[-1] == "transfer.finished", kinds
            assert "transfer.progress" in kinds, kinds
            started, finished = mine[0]["data"], mine[-1]["data"]
            assert started["total"] == size and started["peers"] == [a_id]
            assert started["what"] == str(out)
            progress = [e["data"] for e in mine if e["type"] == "transfer.progress"]
            assert all(0 < p["done"] <= size and p["total"] == size and p["rate"] > 0
                       for p in progress)
            assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
            assert finished["bytes"] == size and finished["rate"] > 0
            assert finished["seconds"] > 0
            print(f"\n  {len(progress)} progress event(s); finished: {finished}")
            # The log has one line for the fetch and none for its progress ticks.
            log = full_log(b)
            assert log.count(f"fetched {object_id}") == 1, log[-3000:]
            assert f"fetching {object_id}:" not in log

            folder = tmp_path / "shared"
            folder.mkdir()
            (folder / "note.txt").write_text("hi")
            assert b.cli("share", "notes", str(folder)).returncode == 0
            watch.until(lambda s: '"folder.state"' in s and '"idle"' in s, "folder idle")
            states = [e["data"]["state"] for e in watch.events()
                      if e["type"] == "folder.state" and e["data"]["folder"] == "notes"]
            assert states[:2] == ["scanning", "idle"], states

            a.stop()
            offline = watch.until(lambda s: '"peer.offline"' in s and a_id in s, "a offline",
                                  timeout=OFFLINE_TIMEOUT)
            assert '"reason"' in offline
            ids = [e["id"] for e in watch.events()]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            assert watch.interrupt() == (0, b"")
        finally:
            watch.close()
