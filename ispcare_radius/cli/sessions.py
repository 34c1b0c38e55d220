"""The ``sessions`` commands: list, show, close, and who-had for lawful requests.

Composition root: turns parsed arguments into ``store.session_query`` calls
and prints results. The operator is entitled to the opened personal fields;
the audit log never gets them.
"""

from __future__ import annotations

import argparse
import getpass
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from ispcare_radius.cli.args import OneLineParser, die, timestamp
from ispcare_radius.cli.config import Config
from ispcare_radius.cli.runtime import Store, open_store
from ispcare_radius.store.session_query import (
    Holder,
    Readable,
    SessionFilter,
    SessionQuery,
    SessionView,
    ip_candidates,
)

# RFC 2866 section 5.10: Acct-Terminate-Cause values, for ``show``.
TERMINATE_CAUSES = {
    1: "User-Request",
    2: "Lost-Carrier",
    3: "Lost-Service",
    4: "Idle-Timeout",
    5: "Session-Timeout",
    6: "Admin-Reset",
    7: "Admin-Reboot",
    8: "Port-Error",
    9: "NAS-Error",
    10: "NAS-Request",
    11: "NAS-Reboot",
    12: "Port-Unneeded",
    13: "Port-Preempted",
    14: "Port-Suspended",
    15: "Service-Unavailable",
    16: "Callback",
    17: "User-Error",
    18: "Host-Request",
}
MAX_LIMIT = 10_000


def session_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "bad session id (a UUID, as sessions list shows)"
        ) from None


def address(text: str) -> str:
    try:
        ip_candidates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad limit {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"limit must be between 1 and {MAX_LIMIT}")
    return value


def add_sessions_parser(sub: Any) -> None:
    """Add ``sessions list|show|close|who-had`` to the top-level subparsers."""
    sessions = sub.add_parser("sessions", help="accounting sessions").add_subparsers(
        dest="action", required=True, parser_class=OneLineParser
    )
    p = sessions.add_parser("list", help="list active (or closed) sessions, newest first")
    p.add_argument("--nas", metavar="NAME", help="only this NAS")
    p.add_argument("--subscriber", metavar="USER", help="only this subscriber (user name)")
    p.add_argument("--closed", action="store_true", help="closed sessions instead of active")
    p.add_argument(
        "--since", type=timestamp, metavar="TIME", help="started (closed: stopped) at or after"
    )
    p.add_argument("--limit", type=limit, default=50)
    p = sessions.add_parser("show", help="everything about one session")
    p.add_argument("id", type=session_id)
    p = sessions.add_parser("close", help="close an active session by hand (reason 'admin')")
    p.add_argument("id", type=session_id)
    p.add_argument("--reason", help="why, for the audit log (no personal values)")
    p = sessions.add_parser(
        "who-had", help="which subscriber had an IP address at a time (audited)"
    )
    p.add_argument("ip", type=address, help="IPv4 or IPv6 address (or IPv6 prefix)")
    p.add_argument("--at", type=timestamp, required=True, metavar="TIME", help="ISO 8601")
    p.add_argument(
        "--reason", required=True, help="the request's reference, for the audit log (required)"
    )


def operator() -> str:
    """The audit actor: who ran the command on this host."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


async def run_sessions(config: Config, args: argparse.Namespace) -> int:
    """Open the store and run one ``sessions`` command."""
    async with open_store(config) as store:
        return await sessions_command(store, args, now=datetime.now(UTC))


async def sessions_command(store: Store, args: argparse.Namespace, *, now: datetime) -> int:
    """Run one ``sessions`` command; exit status 1 with one line on failure."""
    query = SessionQuery(
        store.pool, store.keys.blind_index, store.data_keys, store.keys.epoch, actor=operator()
    )
    if args.action == "list":
        return await _list(store, query, args, now)
    if args.action == "show":
        view = await query.get(args.id)
        if view is None:
            die("no session with this id")
        for line in show_lines(view, now):
            print(line)
        return 0
    if args.action == "close":
        closed = await query.close(args.id, reason=args.reason, now=now)
        if closed is None:
            die("no active session with this id")
        print(f"closed session {args.id} (stopped at {_time(closed[1])}, reason admin)")
        return 0
    try:
        holders = await query.who_had(args.ip, args.at, reason=args.reason, now=now)
    except ValueError as exc:
        die(str(exc))
    for line in who_had_lines(holders):
        print(line)
    return 0


async def _list(store: Store, query: SessionQuery, args: argparse.Namespace, now: datetime) -> int:
    nas_id = None
    if args.nas is not None:
        nas_id = await query.nas_id(args.nas)
        if nas_id is None:
            die(f"no NAS named {args.nas!r}")
    subscriber_id = None
    if args.subscriber is not None:
        found = await store.subscribers.get(args.subscriber)
        if found is None:
            die("no such subscriber")
        subscriber_id = found.id
    views = await query.search(
        SessionFilter(
            closed=args.closed,
            nas_id=nas_id,
            subscriber_id=subscriber_id,
            since=args.since,
            limit=args.limit,
        )
    )
    for line in table([list_row(v, now) for v in views]):
        print(line)
    return 0


def human_bytes(n: int) -> str:
    """Octets in binary units, as operators read them (1.5 GiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """``1d 02:03:04`` / ``02:03:04``; negative clock skew shows as 00:00:00."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def _elapsed(view: SessionView, now: datetime) -> timedelta:
    return (view.stopped_at or now) - view.started_at


def _personal(view: SessionView, name: str) -> str:
    if view.readable is Readable.ERASED:
        return "(erased)"
    if view.readable is Readable.UNREADABLE:
        return "(unreadable)"
    value = view.personal(name)
    return "-" if value is None else value


def _state(view: SessionView) -> str:
    state = "active" if view.active else str(view.close_reason)
    return state if view.start_seen else f"{state}, Start lost"


def list_row(view: SessionView, now: datetime) -> dict[str, str]:
    """One ``sessions list`` line."""
    framed = view.personal("framed_ip") or view.personal("framed_ipv6")
    return {
        "id": str(view.id),
        "started": _time(view.started_at),
        "nas": view.nas_name or str(view.nas_id),
        "subscriber": _personal(view, "user_name"),
        "framed_ip": framed if framed is not None else _personal(view, "framed_ip"),
        "duration": duration(_elapsed(view, now).total_seconds()),
        "in": human_bytes(view.input_octets),
        "out": human_bytes(view.output_octets),
        "state": _state(view),
    }


def table(rows: list[dict[str, str]]) -> list[str]:
    """Aligned columns with a header, or ``(none)``."""
    if not rows:
        return ["(none)"]
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return lines


def show_lines(view: SessionView, now: datetime) -> list[str]:
    """Everything ``sessions show`` prints about one session."""
    cause = view.terminate_cause
    cause_text = "-" if cause is None else f"{cause} ({TERMINATE_CAUSES.get(cause, 'unknown')})"
    stop_line = [] if view.active else [f"stopped: {_time(view.stopped_at)}"]
    lines = [
        f"session: {view.id}",
        f"state: {'active' if view.active else 'closed'}",
        f"subscriber id: {view.subscriber_id}"
        + (" (unknown user: not attributed)" if view.subscriber_id == 0 else ""),
        f"user name: {_personal(view, 'user_name')}",
        f"nas: {view.nas_name or '-'} (id {view.nas_id})",
        f"nas ip: {_personal(view, 'nas_ip')}",
        f"acct-session-id: {_personal(view, 'session_id')}",
        f"calling-station-id: {_personal(view, 'calling_station_id')}",
        f"framed ipv4: {_personal(view, 'framed_ip')}",
        f"framed ipv6: {_personal(view, 'framed_ipv6')}",
        f"nas-port-type: {'-' if view.nas_port_type is None else view.nas_port_type}",
        f"started: {_time(view.started_at)}",
        f"start seen: {'yes' if view.start_seen else 'no (Start lost)'}",
        f"last event: {_time(view.updated_at)}",
        f"last record received: {_time(view.last_seen)}",
        *stop_line,
        f"duration: {duration(_elapsed(view, now).total_seconds())}",
        f"session time (NAS): {view.session_time} s",
        f"input: {view.input_octets} ({human_bytes(view.input_octets)}), wraps {view.input_wraps}",
        f"output: {view.output_octets} ({human_bytes(view.output_octets)}),"
        f" wraps {view.output_wraps}",
        "interim interval: "
        + ("-" if view.interim_interval is None else f"{view.interim_interval} s"),
    ]
    if not view.active:
        lines += [
            f"close reason: {view.close_reason}",
            f"terminate cause: {cause_text}",
            f"closed at: {_time(view.closed_at)}",
        ]
    return lines


def who_had_lines(holders: list[Holder]) -> list[str]:
    """The who-had answer: one row per matching session."""
    if not holders:
        return ["no session had this address at that time"]
    return table(
        [
            {
                "subscriber": h.user_name or ("(erased)" if h.session.subscriber_id else "-"),
                "account_ref": h.account_ref or "-",
                "subscriber_id": str(h.session.subscriber_id),
                "session": str(h.session.id),
                "nas": h.session.nas_name or str(h.session.nas_id),
                "started": _time(h.session.started_at),
                "stopped": _time(h.session.stopped_at) if h.session.stopped_at else "(active)",
            }
            for h in holders
        ]
    )
