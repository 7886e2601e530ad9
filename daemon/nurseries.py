"""Nurseries whose errors read like plain exceptions.

trio (>= 0.25) wraps every error that leaves a nursery in an ExceptionGroup, even a
lone one raised by the nursery's own body.  Where a nursery only runs helpers beside
one main task (progress reporting, hang-up watching), callers want that task's error
as itself: ``except DizzyError`` must keep working.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio


def _single(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        # A task cancelled while another failed: the failure is the news; the
        # cancellation is only its echo.
        real = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        if len(real) != 1:
            return exc if len(exc.exceptions) != 1 else _single(exc.exceptions[0])
        exc = real[0]
    return exc


@contextmanager
def unwrap_single_errors() -> Iterator[None]:
    """Re-raise a group holding exactly one exception as that exception."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner = _single(group)
        if inner is group:
            raise
        raise inner from None


@asynccontextmanager
async def open_helper_nursery() -> AsyncIterator[trio.Nursery]:
    with unwrap_single_errors():
        async with trio.open_nursery() as nursery:
            yield nursery
