"""SIGKILL of the receiving daemon (mostly) and of the sending one at random moments of
a large ``dizzy get``, over and over, each at a random point of the transfer.

Before every kill the destination holds an old, good file: a killed get must leave it
whole (never a partial file under the final name).  In the end the object's bytes equal
its ID, nothing is left in the receiver's partial or temp directories, and the sender
has not re-sent much more than the object once.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from dizzy.protocol.outboard import OutboardBuilder
from tests.daemons import DaemonProcess
from tests.faults.fault_helpers import MB, KillRecord, fault_rng, leftover_partials
from tests.multi.fetch_helpers import (
    cluster,
    file_blake3,
    finish,
    has_outboard,
    io_counter,
    make_random_file,
    partial_rows,
    pid,
    popen_cli,
    put,
    wait_until,
)
from tests.multi.test_pairing_loopback import Node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SIZE = 128 * MB
#: kills in one run (the issue asks for at least 20)...
KILLS = 22
#: ...at this many random points of each object's transfer (a resume runs ahead fast)
KILLS_PER_OBJECT = 5
#: bounds the run if transfers keep finishing before their kill points
MAX_OBJECTS = 10
#: share of kills that hit the receiver (the rest hit the only sender)
RECEIVER_SHARE = 0.7
#: a get that is not killed finishes (or a target is reached) well inside this
STEP_TIMEOUT = 60.0
OLD = b"the old, good version of the output file\n"


def chunk_count(path: Path) -> int:
    builder = OutboardBuilder()
    with open(path, "rb") as f:
        while block := f.read(8 * MB):
            builder.feed(block)
    return len(builder.finish().chunks)


def start_get(b: Node, object_id: str, out: Path) -> subprocess.Popen[bytes]:
    return popen_cli(b.home, "get", object_id, "-o", str(out), "--wait",
                     "--timeout", str(STEP_TIMEOUT))


def quick_restart(node: Node) -> None:
    """Start ``node`` again on its port, ready as soon as its control socket answers
    (``Node.start`` also runs the CLI, and the transfer would race far ahead meanwhile)."""
    node.daemon = DaemonProcess(node.home, [
        "--no-mdns", "--listen", f"127.0.0.1:{node.port}", "--name", node.name, *node.extra,
    ]).start()


def test_sigkill_either_side_during_a_large_get(tmp_path: Path) -> None:
    started = time.monotonic()
    rng = fault_rng("kill-get")
    record = KillRecord()
    served = fetched = objects = 0
    with cluster(tmp_path, ["a", "b"], [("a", "b")]) as nodes:
        a, b = nodes["a"], nodes["b"]
        while record.kills < KILLS and objects < MAX_OBJECTS:
            objects += 1
            src = make_random_file(tmp_path / "src.bin", SIZE, seed=rng.randbytes(8))
            chunks = chunk_count(src)
            object_id = put(a, src)
            wait_until(lambda oid=object_id: has_outboard(a.home, oid), 30, "A to chunk it")
            base = io_counter(pid(a), "rchar")
            out = tmp_path / f"out-{objects}.bin"
            out.write_bytes(OLD)
            # distinct, increasing points of the transfer (chunks recorded by B)
            targets = sorted(rng.sample(range(2, chunks - 2), KILLS_PER_OBJECT))
            getter = start_get(b, object_id, out)
            try:
                for target in targets:
                    floor = partial_rows(b.home, object_id)
                    deadline = time.monotonic() + STEP_TIMEOUT
                    while (rows := partial_rows(b.home, object_id)) < max(target, floor + 1):
                        if getter.poll() is not None:
                            break
                        assert time.monotonic() < deadline, f"stuck below chunk {target}"
                        time.sleep(0.001)
                    if getter.poll() is not None:
                        break  # finished before this point: on to the next object
                    victim = "receiver" if rng.random() < RECEIVER_SHARE else "sender"
                    node = b if victim == "receiver" else a
                    if victim == "sender":
                        served += io_counter(pid(a), "rchar") - base
                    assert node.daemon is not None
                    node.daemon.kill9()
                    record.note(victim, 1)
                    if victim == "receiver":
                        rc, _, err = finish(getter, 20)
                        assert rc != 0 and err.decode().count("\n") == 1, (rc, err)
                        assert out.read_bytes() == OLD, "a killed get replaced the output"
                    print(f"  object {objects}: killed the {victim} at {rows}/{chunks} "
                          "chunks recorded")
                    t0 = time.monotonic()
                    quick_restart(node)
                    record.restarts_seconds += time.monotonic() - t0
                    if victim == "sender":
                        base = io_counter(pid(a), "rchar")
                    else:
                        getter = start_get(b, object_id, out)
                rc, stdout, stderr = finish(getter, STEP_TIMEOUT + 10)
            finally:
                if getter.poll() is None:
                    getter.kill()
                    getter.communicate()
            assert rc == 0, (rc, stderr, b.log())
            assert (stdout, stderr) == (b"", b"")
            served += io_counter(pid(a), "rchar") - base
            assert file_blake3(out) == object_id
            assert out.stat().st_size == SIZE
            fetched += SIZE
            assert partial_rows(b.home) == 0
            assert leftover_partials(b) == []
            out.unlink()
    elapsed = time.monotonic() - started
    print(f"FAULTS kill-get: kills {record.kills} {record.by_victim} over {objects} objects "
          f"of {SIZE // MB} MiB, bytes compared {fetched}, sender read {served / MB:.0f} MiB "
          f"({served / fetched:.2f}x what was fetched), data lost 0, {elapsed:.0f} s")
    assert record.kills >= KILLS
    # each kill loses at most what was in flight or not yet durable (<= 0.5 s of data)
    assert served < 2 * fetched, f"the resumes re-sent too much: {served / MB:.0f} MiB"
