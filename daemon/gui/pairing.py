"""A pairing started from the page: the code to show, then "paired" or the failure.

It runs the control API's own ``pair_invite`` handler (the same one `dizzy pair` uses)
in the GUI's nursery, so the invitation outlives the HTTP request that started it and
the page learns the outcome from its live updates.  One invitation at a time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from dizzy.protocol.control import Notice
from dizzy.protocol.errors import DizzyError, UsageError

from ..api import Call, Handler

log = logging.getLogger("dizzy.gui")

#: an invitation from the page stays open this long (as `dizzy pair`'s default)
PAGE_INVITE_TIMEOUT = 600.0


class PagePairing:
    def __init__(self, invite: Handler) -> None:
        self._invite = invite
        self._scope: trio.CancelScope | None = None
        self.state: dict[str, Any] = {"state": "idle"}

    @property
    def waiting(self) -> bool:
        return self.state["state"] in ("starting", "waiting")

    async def start(self, nursery: trio.Nursery, timeout: float = PAGE_INVITE_TIMEOUT
                    ) -> dict[str, Any]:
        """Open an invitation; returns once the code is known (or the start failed)."""
        if self.waiting:
            raise UsageError(
                f"a pairing is already waiting (code {self.state.get('code')}); "
                "cancel it first"
            )
        self.state = {"state": "starting"}
        code_known = trio.Event()

        async def send(message: Any) -> None:
            if isinstance(message, Notice) and message.kind == "code":
                self.state = {"state": "waiting", "code": message.value,
                              "expires": time.time() + timeout}
                code_known.set()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                self._scope = scope
                task_status.started()
                try:
                    result = await self._invite(Call("pair_invite", {"timeout": timeout},
                                                     send))
                    self.state = {"state": "paired", "device_id": result["device_id"],
                                  "name": result["name"]}
                except DizzyError as exc:
                    self.state = {"state": "failed", "error": exc.message}
                except Exception as exc:
                    log.exception("pairing from the page failed")
                    self.state = {"state": "failed", "error": f"internal error: {exc}"}
                finally:
                    code_known.set()
            if scope.cancelled_caught:
                self.state = {"state": "failed", "error": "cancelled"}
            self._scope = None

        await nursery.start(run)
        await code_known.wait()
        return dict(self.state)

    def cancel(self) -> dict[str, Any]:
        if self._scope is None or not self.waiting:
            raise UsageError("no pairing is waiting")
        self._scope.cancel()
        return {"state": "cancelling"}
