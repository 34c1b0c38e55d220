"""Feeds to billing: the transactional outbox, its relay and its sinks.

A change billing must know about is written to ``feed_outbox`` by the
transaction that makes it (``enqueue``, or a set-based INSERT in the same
statement, see store/sessions.py), under an idempotency key unique per change.
``FeedRelay`` drains the outbox per sink with ``FOR UPDATE SKIP LOCKED``, so
several server processes may run it; delivery is at least once and the
receiver deduplicates by idempotency key. Rows of one ``account_key`` reach a
sink in id order: a row is taken only when every earlier pending row of its
account is taken with it, and a failed batch holds the account's later rows
back until it is delivered or dead-lettered.

Sinks: an HTTP webhook (JSON POST signed with HMAC-SHA256 over the
timestamp and body) and an NDJSON file per UTC day (appended, fsynced). The
SQL views ``feed_usage`` and ``feed_events`` (migration 0015) need no relay.

The webhook uses ``urllib.request`` in a worker thread: the project has no
HTTP client dependency, and one POST per batch does not need one.

Imports aaa, privacy and store; never server or cli.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

import asyncpg

from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.privacy.secret import Secret
from ispcare_radius.store.db import Connection, Pool, acquire, rows_affected

_log = get_logger(__name__)

# NOTIFY channel (migration 0015's trigger): a wake-up hint, never needed for correctness.
CHANNEL: Final = "feed_outbox"
SIGNATURE_HEADER: Final = "X-ISPCare-Signature"

# Topics written here and in store/sessions.py, store/subscribers.py and
# store/flags.py ("flag.raised").
USAGE_TOPIC: Final = "usage"
QUOTA_TOPIC: Final = "quota"
STATUS_TOPIC: Final = "subscriber.status"


class Sink(StrEnum):
    """Where the relay delivers; each has its own delivery columns in feed_outbox."""

    WEBHOOK = "webhook"
    NDJSON = "ndjson"


def account_key(account_ref: str | None, subscriber_id: int) -> str:
    """The ordering key of a subscriber's events: its billing account, else its id.

    The same rule as migration 0015's trigger and views.
    """
    return account_ref if account_ref is not None else f"subscriber:{subscriber_id}"


_ENQUEUE: Final = """
INSERT INTO feed_outbox (topic, idempotency_key, account_key, payload)
VALUES ($1, $2, $3, $4)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""


async def enqueue(
    conn: Connection, *, topic: str, key: str, account_key: str | None, payload: dict[str, Any]
) -> bool:
    """Write one event to the outbox in the caller's transaction; False if ``key`` is there.

    ``key`` is the idempotency key: unique per change, and the same if the
    same change is written again (so the second write is a no-op).
    ``account_key`` orders delivery (None: no ordering; a payload holding a
    positive ``subscriber_id`` then gets its subscriber's key). ``payload``
    must hold no personal value in clear: billing receives it as is.
    """
    if not topic or not key:
        raise ValueError("topic and key must not be empty")
    row = await conn.fetchval(_ENQUEUE, topic, key, account_key, payload)
    return row is not None


_STATUS_EVENT: Final = """
INSERT INTO feed_outbox (topic, idempotency_key, account_key, payload)
SELECT $1, 'status:' || s.id || ':' || pg_current_xact_id()::text,
       coalesce(s.account_ref, 'subscriber:' || s.id),
       jsonb_build_object('subscriber_id', s.id, 'account_ref', s.account_ref,
                          'status', s.status, 'previous', $3::text,
                          'time', to_char(now() AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
FROM subscribers s WHERE s.id = $2 AND s.status <> $3
ON CONFLICT (idempotency_key) DO NOTHING
"""


async def enqueue_status(conn: Connection, subscriber_id: int, previous: str) -> None:
    """After a status change in this transaction: the event billing acts on (none if unchanged).

    Keyed by subscriber and transaction id: one event per change, and a
    rolled-back change wrote none.
    """
    await conn.execute(_STATUS_EVENT, STATUS_TOPIC, subscriber_id, previous)


# --- signatures -----------------------------------------------------------


def sign(secret: Secret, timestamp: int, body: bytes) -> str:
    """The signature header value: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>``.

    The timestamp is signed with the body, so a captured request cannot be
    replayed later than the receiver's tolerance.
    """
    mac = hmac.new(secret.reveal(), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: Secret, header: str, body: bytes, *, now: int, tolerance: int = 300) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds of ``now``."""
    parts: dict[str, str] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        parts.setdefault(name, value)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- sinks ----------------------------------------------------------------


class SinkWriter(Protocol):
    """Delivers a batch of events; returns None when delivered, else an error class."""

    sink: Sink

    async def deliver(self, events: Sequence[dict[str, Any]], *, now: datetime) -> str | None: ...


def _body(events: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"events": list(events)}, separators=(",", ":"), sort_keys=True).encode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would follow a 301/302/303 to a POST with a GET
    without the body (and forward the signature to the new address), and
    that GET's 2xx would mark the batch delivered. A 3xx is a failure."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_OPENER: Final = urllib.request.build_opener(_NoRedirect)


class WebhookSink:
    """POSTs ``{"events": [...]}`` (ordered) to ``url``, signed; any 2xx is delivered."""

    sink = Sink.WEBHOOK

    def __init__(self, url: str, secret: Secret, *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http or https URL")
        self._url = url
        self._secret = secret
        self._timeout = timeout

    def __repr__(self) -> str:
        return "WebhookSink(***)"  # neither the URL (it may hold credentials) nor the secret

    async def deliver(self, events: Sequence[dict[str, Any]], *, now: datetime) -> str | None:
        body = _body(events)
        signature = sign(self._secret, int(now.timestamp()), body)
        return await asyncio.to_thread(self._post, body, signature)

    def _post(self, body: bytes, signature: str) -> str | None:
        # The scheme is checked in __init__ (http or https only).
        request = urllib.request.Request(  # noqa: S310
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature},
        )
        try:
            with _OPENER.open(request, timeout=self._timeout) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"http_{exc.code}"
        except TimeoutError:
            return "timeout"
        except (urllib.error.URLError, OSError):
            return "connection"
        return None if 200 <= status < 300 else f"http_{status}"


class NdjsonSink:
    """Appends one JSON line per event to ``<dir>/feed-<UTC day>.ndjson`` and fsyncs.

    A crash between the fsync and the relay's commit writes the batch again
    on redelivery: readers deduplicate by idempotency key, as webhook
    receivers do.
    """

    sink = Sink.NDJSON

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    async def deliver(self, events: Sequence[dict[str, Any]], *, now: datetime) -> str | None:
        try:
            await asyncio.to_thread(self._append, events, now)
        except OSError:
            return "io"
        return None

    def path_for(self, now: datetime) -> Path:
        """The file the events delivered at ``now`` go to (one per UTC day)."""
        return self._dir / f"feed-{now.astimezone(UTC):%Y-%m-%d}.ndjson"

    def _append(self, events: Sequence[dict[str, Any]], now: datetime) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.path_for(now)
        fresh = not path.exists()
        lines = b"".join(
            json.dumps(e, separators=(",", ":"), sort_keys=True).encode() + b"\n" for e in events
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)
        if fresh:  # the new file's name must survive a crash too
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# --- the relay ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """How the relay retries: ``max_attempts`` per row and sink, then dead letter."""

    max_attempts: int = 12
    backoff_base: float = 5.0
    backoff_max: float = 3600.0
    batch_size: int = 100
    poll: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.batch_size < 1:
            raise ValueError("max_attempts and batch_size must be at least 1")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base or self.poll <= 0:
            raise ValueError("backoff and poll must be positive")


def backoff(attempts: int, settings: RelaySettings) -> timedelta:
    """Delay before attempt ``attempts + 1``: doubling from ``backoff_base``, capped."""
    exponent = min(max(attempts - 1, 0), 32)
    return timedelta(seconds=min(settings.backoff_base * (2**exponent), settings.backoff_max))


def _pending(sink: Sink, alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return f"{p}{sink.value}_delivered_at IS NULL AND {p}{sink.value}_dead_at IS NULL"


def _claim_sql(sink: Sink) -> str:
    s = sink.value
    # Rows due now, skipping those behind an earlier row of their account
    # that waits for a retry (so one failing account holds back only itself).
    return f"""
SELECT o.id, o.topic, o.idempotency_key, o.account_key, o.payload, o.created_at,
       o.{s}_attempts AS attempts
FROM feed_outbox o
WHERE {_pending(sink, "o")}
  AND (o.{s}_next_attempt_at IS NULL OR o.{s}_next_attempt_at <= $1)
  AND NOT EXISTS (
      SELECT 1 FROM feed_outbox b
      WHERE b.account_key = o.account_key AND b.id < o.id AND {_pending(sink, "b")}
        AND b.{s}_next_attempt_at > $1)
ORDER BY o.id
LIMIT $2
FOR UPDATE OF o SKIP LOCKED
"""


def _heads_sql(sink: Sink) -> str:
    return f"""
SELECT account_key, array_agg(id ORDER BY id) AS ids FROM feed_outbox
WHERE {_pending(sink)} AND account_key = ANY($1::text[]) AND id <= $2
GROUP BY account_key
"""


def deliverable(claimed: Sequence[Any], pending: dict[str, list[int]]) -> list[Any]:
    """The claimed rows that may go now: per account, the prefix of its pending rows held.

    ``pending`` lists each account's pending row ids up to the last claimed
    one (rows another relay holds included). A row whose earlier rows are not
    all claimed here waits; rows of no account go at once.
    """
    held: dict[str, set[int]] = {}
    for row in claimed:
        if row["account_key"] is not None:
            held.setdefault(row["account_key"], set()).add(row["id"])
    allowed: set[int] = set()
    for key, ids in held.items():
        for rid in pending.get(key, []):
            if rid not in ids:
                break
            allowed.add(rid)
    return [r for r in claimed if r["account_key"] is None or r["id"] in allowed]


def event(row: Any) -> dict[str, Any]:
    """The JSON form of an outbox row, as every sink delivers it."""
    return {
        "id": int(row["id"]),
        "topic": row["topic"],
        "idempotency_key": row["idempotency_key"],
        "account_key": row["account_key"],
        "created_at": row["created_at"].astimezone(UTC).isoformat(),
        "payload": row["payload"],
    }


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FeedRelay:
    """Drains feed_outbox to ``writers``, in the background or on demand (``run_once``).

    Woken by NOTIFY ``feed_outbox`` (``listen``) or ``wake``, and every
    ``poll`` seconds for retries that fell due and hints that were missed.
    ``delivered``, ``failed`` and ``dead`` count rows over the relay's life.
    """

    def __init__(
        self,
        pool: Pool,
        writers: Iterable[SinkWriter],
        settings: RelaySettings | None = None,
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._pool = pool
        self._writers = {w.sink: w for w in writers}
        self.settings = settings or RelaySettings()
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.delivered = 0
        self.failed = 0
        self.dead = 0

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return tuple(self._writers)

    def wake(self) -> None:
        """Rows were written: deliver soon."""
        self._wakeup.set()

    def start(self) -> None:
        """Run the delivery loop until ``close``."""
        if self._task is None and self._writers:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop the loop; a batch in flight finishes (delivered or not) first."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def drain(self) -> int:
        """Deliver to every sink until nothing is due; return rows delivered."""
        total = 0
        for sink in self._writers:
            # Until nothing is due (or, in the background, until close).
            while not (self._closing and self._task is not None):
                claimed, done = await self.run_once(sink)
                total += done
                if claimed < self.settings.batch_size or done == 0:
                    break
        return total

    async def run_once(self, sink: Sink) -> tuple[int, int]:
        """One batch to ``sink``: (rows claimed, rows delivered)."""
        writer = self._writers[sink]
        s = sink.value
        async with acquire(self._pool, timeout=30.0) as conn, conn.transaction():
            now = self._clock()
            claimed = await conn.fetch(_claim_sql(sink), now, self.settings.batch_size)
            if not claimed:
                return 0, 0
            keys = sorted({r["account_key"] for r in claimed if r["account_key"] is not None})
            pending: dict[str, list[int]] = {}
            if keys:
                rows = await conn.fetch(_heads_sql(sink), keys, max(r["id"] for r in claimed))
                pending = {r["account_key"]: list(r["ids"]) for r in rows}
            batch = deliverable(claimed, pending)
            if not batch:
                return len(claimed), 0
            error = await writer.deliver([event(r) for r in batch], now=now)
            ids = [r["id"] for r in batch]
            done = self._clock()
            if error is None:
                await conn.execute(
                    f"UPDATE feed_outbox SET {s}_delivered_at = $2,"
                    f" {s}_attempts = {s}_attempts + 1, {s}_last_error = NULL,"
                    f" {s}_next_attempt_at = NULL WHERE id = ANY($1::bigint[])",
                    ids,
                    done,
                )
                self.delivered += len(ids)
                return len(claimed), len(ids)
            # Per row: its own attempt count decides its delay and dead letter.
            dead_rows = await conn.fetch(
                f"UPDATE feed_outbox SET {s}_attempts = {s}_attempts + 1, {s}_last_error = $2,"
                f" {s}_next_attempt_at = $3::timestamptz + make_interval(secs => least("
                f"$4::float8 * power(2, least({s}_attempts, 32)), $5::float8)),"
                f" {s}_dead_at = CASE WHEN {s}_attempts + 1 >= $6 THEN $3::timestamptz END"
                f" WHERE id = ANY($1::bigint[]) RETURNING {s}_dead_at IS NOT NULL AS dead",
                ids,
                error,
                done,
                self.settings.backoff_base,
                self.settings.backoff_max,
                self.settings.max_attempts,
            )
        dead = sum(1 for r in dead_rows if r["dead"])
        self.failed += len(ids)
        self.dead += dead
        if dead:
            _log.error("feed_dead_letter", sink=s, rows=dead, error=error)
        _log.warning("feed_delivery_failed", sink=s, rows=len(ids), error=error)
        return len(claimed), 0

    async def _listen(self) -> contextlib.AsyncExitStack:
        stack = contextlib.AsyncExitStack()
        conn = await stack.enter_async_context(acquire(self._pool, timeout=30.0))

        def hint(*_: object) -> None:
            self._wakeup.set()

        await conn.add_listener(CHANNEL, hint)
        stack.push_async_callback(conn.remove_listener, CHANNEL, hint)
        return stack

    async def _loop(self) -> None:
        wait = self.settings.poll
        stack: contextlib.AsyncExitStack | None = None
        try:
            while not self._closing:
                if stack is None:
                    with contextlib.suppress(StoreUnavailable, asyncpg.PostgresError, OSError):
                        stack = await self._listen()
                try:
                    await self.drain()
                    wait = self.settings.poll
                except StoreUnavailable:
                    wait = min(wait * 2, 60.0)  # the database is down; rows wait in the outbox
                    if stack is not None:
                        with contextlib.suppress(Exception):
                            await stack.aclose()
                        stack = None
                except Exception as exc:  # a bug must not stop the relay for good
                    _log.error("feed_relay_error", error=type(exc).__name__)
                    wait = min(wait * 2, 60.0)
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                self._wakeup.clear()
        finally:
            if stack is not None:
                with contextlib.suppress(Exception):
                    await stack.aclose()


# --- operator views -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """``feed status``: one sink's backlog, failures, dead letters and last delivery."""

    sink: Sink
    backlog: int
    failing: int
    dead: int
    oldest_pending: datetime | None
    last_delivery: datetime | None
    last_error: str | None


async def status(conn: Connection, sinks: Iterable[Sink]) -> list[SinkStatus]:
    """The state of each sink in ``sinks``."""
    out: list[SinkStatus] = []
    for sink in sinks:
        s = sink.value
        row = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE {_pending(sink)}) AS backlog,"
            f" count(*) FILTER (WHERE {_pending(sink)} AND {s}_attempts > 0) AS failing,"
            f" count(*) FILTER (WHERE {s}_dead_at IS NOT NULL) AS dead,"
            f" min(created_at) FILTER (WHERE {_pending(sink)}) AS oldest_pending,"
            f" max({s}_delivered_at) AS last_delivery FROM feed_outbox"
        )
        assert row is not None
        error = await conn.fetchval(
            f"SELECT {s}_last_error FROM feed_outbox WHERE {s}_last_error IS NOT NULL"
            " ORDER BY id DESC LIMIT 1"
        )
        out.append(
            SinkStatus(
                sink=sink,
                backlog=row["backlog"],
                failing=row["failing"],
                dead=row["dead"],
                oldest_pending=row["oldest_pending"],
                last_delivery=row["last_delivery"],
                last_error=error,
            )
        )
    return out


async def replay(conn: Connection, *, since: datetime, sinks: Iterable[Sink]) -> int:
    """Queue again the rows written since ``since`` that were delivered or dead-lettered.

    Receivers deduplicate by idempotency key, so a replay fills their gaps
    and changes nothing they already hold. Returns the rows re-queued (per sink).
    """
    total = 0
    for sink in sinks:
        s = sink.value
        result = await conn.execute(
            f"UPDATE feed_outbox SET {s}_delivered_at = NULL, {s}_dead_at = NULL,"
            f" {s}_attempts = 0, {s}_next_attempt_at = NULL, {s}_last_error = NULL"
            f" WHERE created_at >= $1 AND NOT ({_pending(sink)})",
            since,
        )
        total += rows_affected(result)
    if total:
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return total


async def prune(conn: Connection, *, before: datetime, sinks: Iterable[Sink]) -> int:
    """Delete rows older than ``before`` that every sink in ``sinks`` is done with."""
    done = " AND ".join(f"NOT ({_pending(s)})" for s in sinks) or "true"
    result = await conn.execute(f"DELETE FROM feed_outbox WHERE created_at < $1 AND {done}", before)
    return rows_affected(result)
