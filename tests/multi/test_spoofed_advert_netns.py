"""An unpaired device advertises a paired device's ID over real mDNS (network namespaces).

alice and bob are paired; mallory, paired with bob but never with alice, runs a real
daemon (which presents her own certificate) and
also advertises ``_dizzy._tcp`` with bob's device ID (and name) at her own address.
alice believes the advert enough to dial it, and TLS pinning refuses mallory's
certificate: alice never lists bob online at mallory's address, and when the real bob
comes back she connects to him, spoof or no spoof.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multi.test_pairing_netns import (
    PORT,
    STAYS_OFFLINE,
    Node,
    all_logs,
    online_with,
    pair,
    poll,
    start_nodes,
    stop_all,
)
from tests.netns import netns_hosts

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(180)]

#: advertise bob's ID at mallory's address until killed
SPOOF = r"""
import sys, time
from zeroconf import ServiceInfo, Zeroconf
device_id, name, addr, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
zc = Zeroconf(interfaces=[addr])
zc.register_service(ServiceInfo(
    "_dizzy._tcp.local.", "spoof-of-bob._dizzy._tcp.local.", port=port,
    properties={"id": device_id, "v": "1", "n": name, "s": "1"},
    server="spoof-of-bob.local.", parsed_addresses=[addr]), cooperating_responders=True)
print("registered", flush=True)
time.sleep(600)
"""


def test_advert_with_a_paired_id_is_not_trusted(tmp_path: Path) -> None:
    with netns_hosts(3) as hosts:
        nodes: list[Node] = []
        spoof: subprocess.Popen[str] | None = None
        try:
            nodes = start_nodes(hosts, tmp_path, ["alice", "bob", "mallory"])
            alice, bob, mallory = nodes
            logs = all_logs(alice, bob, mallory)
            pair(alice, bob)
            # mallory is bob's other device (so her daemon does run TLS), never alice's
            pair(mallory, bob)
            poll("alice shows bob online", online_with(alice, bob), logs)
            spoof = mallory.host.run(
                [sys.executable, "-u", "-c", SPOOF, bob.device_id, "bob", mallory.host.addr,
                 str(PORT)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert spoof.stdout is not None and spoof.stdout.readline().strip() == "registered"
            bob.stop()
            poll("alice shows bob offline", lambda: not online_with(alice, bob)(), logs)
            mallory_at = f"{mallory.host.addr}:{PORT}"

            def refused_mallory() -> bool:
                return any(mallory_at in line and "unpaired device" in line
                           for line in alice.daemon.log().splitlines())

            _, took = poll("alice to dial the spoofed advert and refuse it", refused_mallory,
                           logs)
            print(f"\n  alice refused the spoofed advert {took:.2f} s after bob stopped")
            deadline = time.monotonic() + STAYS_OFFLINE
            while time.monotonic() < deadline:
                peer = alice.peer(bob)
                assert peer is not None and peer["online"] is False, (peer, logs())
                time.sleep(0.5)
            assert not any("connected to peer" in line and mallory_at in line
                           for line in alice.daemon.log().splitlines()), logs()
            assert [p["id"] for p in alice.peers()] == [bob.device_id]
            # The real bob comes back while the spoof still runs: alice reaches him.
            bob.start()
            bob.wait_ready()
            poll("alice shows the real bob online", online_with(alice, bob), logs)
            peer = alice.peer(bob)
            assert peer is not None and peer["address"] != mallory_at, peer
            assert all(p["id"] != alice.device_id for p in mallory.peers())
        finally:
            if spoof is not None:
                spoof.kill()
                spoof.wait(5)
            stop_all(nodes)
