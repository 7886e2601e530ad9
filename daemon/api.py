"""The control API's dispatch table and the per-request context handed to handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from dizzy.protocol.control import Data, Notice, Progress
from dizzy.protocol.errors import UsageError

from .nurseries import open_helper_nursery
from .progress import CancelFlag, ProgressCounter

log = logging.getLogger("dizzy.control")

#: how often a long call reports progress: smooth for a bar, cheap for the socket
PROGRESS_INTERVAL = 0.1


class Call:
    """One control request in flight: its parameters and the ways to answer early."""

    def __init__(
        self, method: str, params: dict[str, Any], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        self.method = method
        self.params = params
        self._send = send
        self.cancel = CancelFlag()

    def param(
        self,
        name: str,
        kind: type | tuple[type, ...],
        *,
        default: Any = ...,
        allow_none: bool = False,
    ) -> Any:
        if name not in self.params:
            if default is ...:
                raise UsageError(f"{self.method}: missing parameter {name!r}")
            return default
        value = self.params[name]
        if value is None and allow_none:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join(k.__name__ for k in kinds)
            raise UsageError(f"{self.method}: parameter {name!r} must be {wanted}")
        return value

    def abs_path(self, name: str) -> Path:
        """A path parameter: absolute (the client resolves it), no NUL."""
        raw = self.param(name, str)
        if "\0" in raw:
            raise UsageError(f"{name} contains a NUL byte")
        path = Path(raw)
        if not path.is_absolute():
            raise UsageError(f"{name} must be an absolute path (the client resolves it)")
        return path

    async def send_progress(self, done: int, total: int | None, what: str = "") -> None:
        await self._send(Progress(done, total, what))

    async def send_notice(self, kind: str, value: Any = None) -> None:
        await self._send(Notice(kind, value))

    async def send_data(self, block: bytes) -> None:
        await self._send(Data(block))

    @asynccontextmanager
    async def reporting(self, counter: ProgressCounter) -> AsyncIterator[None]:
        """Send ``counter``'s progress every PROGRESS_INTERVAL while the body runs."""

        async def report() -> None:
            last = -1
            while True:
                await trio.sleep(PROGRESS_INTERVAL)
                if counter.done != last:
                    last = counter.done
                    try:
                        await self.send_progress(counter.done, counter.total, counter.what)
                    except Exception:
                        return  # the client went away; the work itself will notice

        async with open_helper_nursery() as nursery:
            nursery.start_soon(report)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()


Handler = Callable[[Call], Awaitable[Any]]


class ControlApi:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def register(self, method: str, handler: Handler) -> None:
        if method in self.handlers:
            raise ValueError(f"control method {method!r} registered twice")
        self.handlers[method] = handler

    def lookup(self, method: str) -> Handler:
        try:
            return self.handlers[method]
        except KeyError:
            raise UsageError(f"unknown control method {method!r}") from None
