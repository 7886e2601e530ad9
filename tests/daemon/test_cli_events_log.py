"""``dizzy events`` and ``dizzy log`` against a real daemon process."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from pathlib import Path

from dizzy.client import Client
from dizzy.client.logview import follow, tail_lines
from tests.daemons import DaemonProcess, run_cli
from tests.event_lines import CLI_DEADLINE, popen


def test_events_json_live_with_since_and_type(daemon: DaemonProcess, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    # Start from the newest id now, so the processes' start-up races nothing.
    with Client(daemon.home).events() as probe:
        now = str(probe.last_id)
    watch = popen(daemon.home, "events", "--json", "--since", now)
    only_unshared = popen(daemon.home, "events", "--json", "--type", "folder.unshared",
                          "--since", now)
    human = popen(daemon.home, "events", "--since", now)
    try:
        assert daemon.cli("share", "docs", str(folder)).returncode == 0
        line = watch.until(lambda s: '"folder.scanned"' in s, "folder.scanned")
        scanned = json.loads(line)
        assert scanned["data"]["folder"] == "docs" and scanned["data"]["files"] == 1
        assert set(scanned) == {"id", "time", "type", "data"}
        first = json.loads(watch.lines[0])
        assert first["type"] == "folder.shared"
        assert first["data"] == {"folder": "docs", "path": str(folder.resolve()),
                                 "mode": "send-receive"}
        watch.until(lambda s: '"idle"' in s, "folder.state idle")
        human.until(lambda s: "folder.shared" in s and "sharing folder docs" in s,
                    "a human line")
        assert daemon.cli("unshare", "docs").returncode == 0
        unshared = json.loads(only_unshared.until(lambda s: "unshared" in s, "unshare"))
        assert [json.loads(s)["type"] for s in only_unshared.lines] == ["folder.unshared"]
        # --since replays from the ring, in order, and Ctrl-C exits 0 quietly.
        replay = popen(daemon.home, "events", "--json", "--since", str(first["id"] - 1))
        replay.until(lambda s: json.loads(s)["id"] == unshared["id"], "the replay")
        ids = [json.loads(s)["id"] for s in replay.lines]
        assert ids == sorted(ids) and ids[0] == first["id"]
        for reader in (watch, only_unshared, human, replay):
            assert reader.interrupt() == (0, b"")
    finally:
        for reader in (watch, only_unshared, human):
            if reader.proc.poll() is None:
                reader.proc.kill()
                reader.proc.communicate()


def test_events_without_a_daemon_exits_5(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "nohome", "events", timeout=CLI_DEADLINE)
    assert proc.returncode == 5
    assert proc.stderr.decode().startswith("dizzy: the dizzy daemon is not running")


def test_daemon_logs_to_its_home_and_dizzy_log_shows_it(daemon: DaemonProcess,
                                                        tmp_path: Path) -> None:
    log_file = daemon.home / "log" / "dizzy.log"
    assert "dizzy daemon ready" in log_file.read_text()
    follower = popen(daemon.home, "log", "-f", "-n", "1")
    try:
        follower.until(lambda s: "dizzy daemon ready" in s, "the last line")
        folder = tmp_path / "f"
        folder.mkdir()
        assert daemon.cli("share", "pics", str(folder)).returncode == 0
        follower.until(lambda s: "sharing folder pics" in s, "a new line, live")
        assert follower.interrupt() == (0, b"")
    finally:
        if follower.proc.poll() is None:
            follower.proc.kill()
            follower.proc.communicate()
    daemon.stop()
    # Works with the daemon stopped; exactly the asked number of lines.
    shown = run_cli(daemon.home, "log", "-n", "2", timeout=CLI_DEADLINE)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.decode().splitlines()
    assert len(lines) == 2 and "shutting down" in "".join(lines)
    # One line per event: the share was logged once, not once per layer.
    assert log_file.read_text().count("sharing folder pics") == 1


def test_log_without_a_log_file_is_not_found(tmp_path: Path) -> None:
    proc = run_cli(tmp_path / "fresh", "log", timeout=CLI_DEADLINE)
    assert proc.returncode == 3
    assert b"no log at" in proc.stderr
    # A log path that cannot be read is a storage error, in one line.
    (tmp_path / "odd" / "log" / "dizzy.log").mkdir(parents=True)
    proc = run_cli(tmp_path / "odd", "log", timeout=CLI_DEADLINE)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.decode().startswith("dizzy: cannot read ")
    assert len(proc.stderr.splitlines()) == 1


def test_tail_reads_only_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    lines = [f"line {i} " + "y" * (i % 300) for i in range(5000)]
    path.write_text("\n".join(lines) + "\n")
    assert tail_lines(path, 3) == lines[-3:]
    assert tail_lines(path, 1000) == lines[-1000:]
    assert tail_lines(path, 0) == []
    short = tmp_path / "short.log"
    short.write_text("one\ntwo")  # no final newline
    assert tail_lines(short, 10) == ["one", "two"]


def test_follow_survives_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "log" / "dizzy.log"
    path.parent.mkdir()
    # The same handler the daemon uses, rotating every ~1 KiB.
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=1024, backupCount=2)
    logger = logging.getLogger("test.follow")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    deadline = time.monotonic() + CLI_DEADLINE
    lines = follow(path, from_end=False, poll=0.01, stop=lambda: time.monotonic() > deadline)
    try:
        got: list[str] = []
        sent = 0
        for _batch in range(12):  # ~10 rotations
            for _ in range(10):
                logger.info("message %05d %s", sent, "z" * 60)
                sent += 1
            while len(got) < sent:
                got.append(next(lines))
        assert got == [f"message {i:05d} {'z' * 60}" for i in range(sent)]
        assert (tmp_path / "log" / "dizzy.log.2").exists()  # it did rotate
        # Truncated in place (a `> dizzy.log`): read again from the start.
        handler.close()
        path.write_text("")
        with open(path, "a") as f:
            f.write("after truncation\n")
        assert next(lines) == "after truncation"
    finally:
        lines.close()
        logger.removeHandler(handler)
        handler.close()
