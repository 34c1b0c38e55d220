"""Captured structlog events a test can wait on: ``capture_logs`` with a wake-up per line.

For in-process code that logs what it has done (a job's pass, a replay that
drained): the test awaits the line, or re-checks a condition after each one,
instead of sleeping between checks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import NoReturn

import structlog
from structlog.testing import LogCapture
from structlog.typing import EventDict, WrappedLogger


class LogWatch(LogCapture):
    """``entries`` as ``LogCapture`` keeps them; ``wait_for`` and ``until`` wake on each one."""

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._logged = asyncio.Event()

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> NoReturn:
        try:
            super().__call__(logger, method_name, event_dict)
        finally:
            # Code under test may log from a worker thread (asyncio.to_thread).
            self._loop.call_soon_threadsafe(self._logged.set)

    async def wait_for(self, event: str, *, timeout: float = 15.0) -> EventDict:
        """The first captured ``event`` entry, waiting up to ``timeout`` seconds for it."""

        def matching() -> Iterator[EventDict]:
            return (e for e in self.entries if e["event"] == event)

        await self.until(lambda: any(matching()), f"a {event!r} log line", timeout=timeout)
        return next(matching())

    async def until(
        self, condition: Callable[[], bool], what: str, *, timeout: float = 15.0
    ) -> None:
        """Wait until ``condition`` holds: checked now and after each line logged."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._logged.clear()
                    if condition():
                        return
                    await self._logged.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


@contextlib.contextmanager
def watch_logs() -> Iterator[LogWatch]:
    """Like ``structlog.testing.capture_logs`` (call inside the event loop), yielding a LogWatch."""
    watch = LogWatch()
    # As capture_logs does: change the configured list in place, since bound
    # loggers hold a reference to it.
    processors = structlog.get_config()["processors"]
    saved = processors.copy()
    try:
        processors.clear()
        processors.append(watch)
        structlog.configure(processors=processors)
        yield watch
    finally:
        processors.clear()
        processors.extend(saved)
        structlog.configure(processors=processors)
