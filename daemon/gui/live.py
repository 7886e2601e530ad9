"""What the page shows beside the control API's answers: transfers and recent problems.

``LiveState.apply`` folds bus events (see the events contract) into the active
transfers (a ``transfer.started`` without a ``transfer.finished``/``transfer.failed``
yet, with its latest ``transfer.progress``) and a short list of recent conflicts and
errors.  ``serve`` feeds it from the daemon's bus: the ring's history first, so a page
opened late still shows what happened, then every new event.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import trio

from ..events import Event, EventBus

#: problems the page lists (newest first); older ones are in `dizzy events`
MAX_PROBLEMS = 50
#: a transfer with no news for this long is dropped from the list (its fetch went away
#: without a word, e.g. a daemon without the finishing emitter); the bus still has it
STALE_TRANSFER = 300.0

#: transfers tracked at most (a folder sync runs 32 at once); past it the oldest go, so
#: starts that never got a finish cannot grow memory while no page is open
MAX_TRANSFERS = 1000

PROBLEM_TYPES = {"conflict", "error", "transfer.failed", "pairing.failed", "peer.refused"}


def describe_problem(event: Event) -> str:
    d = event.data
    if event.type == "conflict":
        who = str(d.get("device_id") or "?").split("-", 1)[0]
        return (f"conflict in {d.get('folder')}: {d.get('path')} — the version from {who} "
                f"was kept as {d.get('conflict_path')}")
    if event.type == "error":
        return f"{d.get('where')}: {d.get('message')}"
    if event.type == "transfer.failed":
        return f"transfer of {str(d.get('object_id'))[:16]}… failed: {d.get('error')}"
    if event.type == "pairing.failed":
        return f"pairing failed: {d.get('reason')}"
    if event.type == "peer.refused":
        who = d.get("device_id") or "an unknown device"
        return f"refused {who} at {d.get('address')}: {d.get('reason')}"
    if event.type == "folder.state":
        return f"folder {d.get('folder')}: {d.get('error')}"
    return event.type


class LiveState:
    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self.transfers: dict[str, dict[str, Any]] = {}
        self.problems: deque[dict[str, Any]] = deque(maxlen=MAX_PROBLEMS)
        self.changed = trio.Event()

    def apply(self, event: Event) -> None:
        kind, data = event.type, event.data
        if kind.startswith("transfer."):
            self._apply_transfer(event)
        if kind in PROBLEM_TYPES or (kind == "folder.state" and data.get("error")):
            text = describe_problem(event)
            last = self.problems[-1] if self.problems else None
            if last is not None and last["text"] == text:
                # The same complaint again (a peer retrying, a folder still missing):
                # one line with a count, not a list flooded with copies.
                last.update(time=event.time, id=event.id, repeats=last["repeats"] + 1)
            else:
                self.problems.append({"id": event.id, "time": event.time, "type": kind,
                                      "text": text, "data": data, "repeats": 1})
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    def _apply_transfer(self, event: Event) -> None:
        data = event.data
        oid = data.get("object_id")
        if not isinstance(oid, str):
            return
        if event.type in ("transfer.finished", "transfer.failed"):
            self.transfers.pop(oid, None)
            return
        entry = self.transfers.get(oid)
        if entry is None:
            if event.type not in ("transfer.started", "transfer.progress"):
                return
            # A progress event whose start fell out of the ring still counts.
            if len(self.transfers) >= MAX_TRANSFERS:
                oldest = min(self.transfers.values(), key=lambda t: t["updated"])
                del self.transfers[oldest["object_id"]]
            entry = self.transfers[oid] = {
                "object_id": oid, "what": "", "peers": [], "done": 0, "total": None,
                "rate": 0.0, "started": event.time, "updated": event.time,
            }
        if event.type == "transfer.started":
            entry["what"] = data.get("what") or ""
            entry["peers"] = list(data.get("peers") or [])
            entry["total"] = data.get("total")
            entry["started"] = event.time
        else:
            entry["done"] = data.get("done", entry["done"])
            if data.get("total") is not None:
                entry["total"] = data["total"]
            entry["rate"] = data.get("rate", entry["rate"])
        entry["updated"] = event.time

    def active_transfers(self) -> list[dict[str, Any]]:
        now = self._clock()
        for oid in [o for o, t in self.transfers.items()
                    if now - t["updated"] > STALE_TRANSFER]:
            del self.transfers[oid]
        return sorted(self.transfers.values(), key=lambda t: t["started"])

    def recent_problems(self) -> list[dict[str, Any]]:
        return list(reversed(self.problems))

    async def serve(self, bus: EventBus, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        history = bus.recent()
        for event in history:
            self.apply(event)
        task_status.started()
        async for event in bus.subscribe(after=history[-1].id if history else bus.last_id):
            if event.id:  # `events.dropped` (id 0) only says we fell behind
                self.apply(event)
