"""The RADIUS server: sockets, per-datagram checks, dispatch to handlers, shutdown.

Imports protocol, aaa (model and the request/reply port), and server modules;
never store or asyncpg.  Every datagram goes through the same ordered checks
(client, parse, code, reply cache, authenticity); each failing check drops
the datagram with a ``DropReason`` that is counted and logged.  An
Access-Reject is held back ``reject_delay`` seconds on a loop timer (never by
blocking), and its key stays in progress until it is sent.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from ispcare_radius.aaa.model import MessageAuthenticatorPolicy, Nas
from ispcare_radius.protocol.authenticator import (
    build_response,
    message_authenticator_ok,
    request_authenticator_ok,
)
from ispcare_radius.protocol.codes import CODE_NAMES, Code, DecodeError, DropReason
from ispcare_radius.protocol.packet import Packet, parse
from ispcare_radius.server.clients import ClientTable
from ispcare_radius.server.counters import Counters
from ispcare_radius.server.dedup import IN_PROGRESS, NEW, CacheKey, ReplyCache
from ispcare_radius.server.endpoint import Endpoint, PortKind, open_udp_socket
from ispcare_radius.server.handler import FastHandler, Handler, NotReady, Reply, Request
from ispcare_radius.server.settings import ServerSettings

PROXY_STATE = 33

_ALLOWED: dict[PortKind, frozenset[int]] = {
    PortKind.AUTH: frozenset({Code.ACCESS_REQUEST, Code.STATUS_SERVER}),
    PortKind.ACCT: frozenset({Code.ACCOUNTING_REQUEST, Code.STATUS_SERVER}),
}
# The reply codes a handler may give to each request code; anything else is
# a handler bug and is not sent.
_REPLIES: dict[int, frozenset[int]] = {
    Code.ACCESS_REQUEST: frozenset({Code.ACCESS_ACCEPT, Code.ACCESS_REJECT, Code.ACCESS_CHALLENGE}),
    Code.ACCOUNTING_REQUEST: frozenset({Code.ACCOUNTING_RESPONSE}),
}
# RFC 5997 section 3: Status-Server is answered with Access-Accept on the
# authentication port and with Accounting-Response on the accounting port.
_STATUS_REPLY: dict[PortKind, int] = {
    PortKind.AUTH: Code.ACCESS_ACCEPT,
    PortKind.ACCT: Code.ACCOUNTING_RESPONSE,
}
_ACCESS_REPLIES = _REPLIES[Code.ACCESS_REQUEST]


class Logger(Protocol):
    """The slice of a structlog bound logger the server uses."""

    def debug(self, event: str, **kw: Any) -> Any: ...
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


class RadiusServer:
    """Serves RADIUS over UDP for the NAS in ``clients``, answering via the handlers."""

    def __init__(
        self,
        settings: ServerSettings,
        clients: ClientTable,
        *,
        auth_handler: Handler,
        acct_handler: Handler | None,
        counters: Counters | None = None,
        logger: Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clients = clients
        self.counters = counters if counters is not None else Counters()
        self._handlers: dict[PortKind, Handler | None] = {
            PortKind.AUTH: auth_handler,
            PortKind.ACCT: acct_handler,
        }
        # Optional synchronous fast paths (FastHandler), found once here.
        self._fast: dict[PortKind, FastHandler | None] = {
            kind: h if isinstance(h, FastHandler) else None for kind, h in self._handlers.items()
        }
        # A concrete bound logger, resolved once: the lazy proxy that
        # get_logger returns re-resolves on every call, which costs microseconds
        # per dropped datagram.  Configure structlog before building the server.
        self._log: Logger = logger if logger is not None else structlog.get_logger(__name__).bind()
        self._clock = clock
        self._cache = ReplyCache(ttl=settings.reply_cache_ttl, max_entries=settings.reply_cache_max)
        self._endpoints: list[Endpoint] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ma_warned: dict[int, float] = {}
        self._state = "new"  # new -> running -> stopping -> stopped
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        # Access-Rejects decided and waiting out reject_delay, by request key.
        self._delayed: dict[CacheKey, _DelayedReject] = {}

    def __repr__(self) -> str:
        return f"RadiusServer(state={self._state}, in_flight={len(self._tasks)})"

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Bind every configured address; raises OSError naming the one that failed."""
        if self._state != "new":
            raise RuntimeError("RadiusServer.start() may be called once")
        settings = self.settings
        wanted = [(PortKind.AUTH, h, p) for h, p in settings.auth_listen]
        wanted += [(PortKind.ACCT, h, p) for h, p in settings.acct_listen]
        socks = []
        try:
            for kind, host, port in wanted:
                try:
                    sock = open_udp_socket(
                        host,
                        port,
                        recv_buffer_bytes=settings.recv_buffer_bytes,
                        reuse_port=settings.reuse_port,
                    )
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"cannot listen for {kind} on [{host}]:{port}: {exc.strerror}"
                    ) from None
                socks.append((kind, sock))
        except BaseException:
            for _, sock in socks:
                sock.close()
            raise
        for kind, sock in socks:
            endpoint = Endpoint(kind, sock, self._on_datagram, self._on_callback_error)
            self._endpoints.append(endpoint)
            endpoint.start_accepting()
        self._state = "running"
        for e in self._endpoints:
            self._log.info("listening", service=e.kind.value, host=e.local_host, port=e.local_port)

    @property
    def bound_ports(self) -> dict[str, list[tuple[str, int]]]:
        """``{"auth": [(host, port), ...], "acct": [...]}`` for every listening socket,
        with the port the kernel chose where the settings say 0."""
        out: dict[str, list[tuple[str, int]]] = {}
        for e in self._endpoints:
            out.setdefault(e.kind.value, []).append((e.local_host, e.local_port))
        return out

    @property
    def in_flight(self) -> int:
        """Requests handed to a handler and not finished yet."""
        return len(self._tasks)

    @property
    def delayed_rejects(self) -> int:
        """Access-Rejects decided and waiting out ``reject_delay``."""
        return len(self._delayed)

    async def stop(self) -> None:
        """Stop reading, let in-flight requests finish (up to ``shutdown_grace``), close.

        Replies of requests that finish within the grace period are still sent;
        the rest are cancelled.  Access-Rejects still waiting out
        ``reject_delay`` are sent at once.  Safe to call more than once.
        """
        if self._state in ("stopping", "stopped"):
            await self._stopped.wait()
            return
        self._state = "stopping"
        for endpoint in self._endpoints:
            endpoint.stop_accepting()
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.settings.shutdown_grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                self._log.warning("shutdown_cancelled", requests=len(late))
        # Rejects still waiting out their delay are sent now: a NAS must not
        # be left without the answer that was already decided.
        for key in list(self._delayed):
            self._send_delayed(key)
        for endpoint in self._endpoints:
            endpoint.close()
        self._state = "stopped"
        self._stopped.set()
        self._log.info("stopped")

    async def serve_forever(self) -> None:
        """Start if needed and serve until SIGTERM/SIGINT (or ``stop``), then return."""
        if self._state == "new":
            await self.start()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                continue
            installed.append(sig)
        try:
            await self._stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop_task is None:
            self._log.info("signal", signal=sig.name)
            self._stop_task = asyncio.get_running_loop().create_task(self.stop())

    # -- per datagram ------------------------------------------------------

    def _drop(self, reason: DropReason, nas: Nas | None) -> None:
        name = nas.name if nas is not None else None
        self.counters.drop(reason, name)
        self._log.debug("drop", reason=reason.value, nas=name)

    def _on_callback_error(self, endpoint: Endpoint, exc: BaseException) -> None:
        self.counters.drop(DropReason.HANDLER_ERROR)
        self._log.error("datagram_error", service=endpoint.kind.value, error=type(exc).__name__)

    def _on_datagram(self, endpoint: Endpoint, data: bytes, addr: Any) -> None:
        now = self._clock()
        host: str = addr[0]
        # (a) Only configured NAS may talk to us; the source stays out of logs.
        nas = self.clients.match(host)
        if nas is None:
            self._drop(DropReason.UNKNOWN_CLIENT, None)
            return
        # (b) Structure.
        try:
            packet = parse(data, max_attributes=self.settings.max_attributes)
        except DecodeError as exc:
            self._drop(exc.reason, nas)
            return
        # (c) Code allowed on this port.
        code = packet.code
        kind = endpoint.kind
        if code not in _ALLOWED[kind]:
            self._drop(DropReason.UNEXPECTED_CODE, nas)
            return
        counters = self.counters
        counters.request(code, nas.name)
        # (d) Duplicates: RFC 5080 section 2.2.2.
        key = CacheKey(host, addr[1], code, packet.identifier, packet.authenticator)
        cache = self._cache
        hit = cache.begin(key, now)
        if hit is not NEW:
            if hit is IN_PROGRESS:
                self._drop(DropReason.DUPLICATE_IN_PROGRESS, nas)
                return
            assert hit.reply is not None
            endpoint.send(hit.reply, addr)
            counters.duplicate_answered += 1
            counters.reply(hit.reply[0], nas.name)
            return
        try:
            self._admit(endpoint, packet, nas, key, addr, now)
        except Exception:
            # Never leave a key in progress behind a bug: the retry must get through.
            cache.forget(key)
            raise

    def _admit(
        self, endpoint: Endpoint, packet: Packet, nas: Nas, key: CacheKey, addr: Any, now: float
    ) -> None:
        """Steps (e) to (g) for a request the reply cache has just marked in progress."""
        cache = self._cache
        code = packet.code
        kind = endpoint.kind
        # (e) Authenticity.
        ma = self._authentic(packet, nas, now)
        if isinstance(ma, DropReason):
            cache.forget(key)
            self._drop(ma, nas)
            return
        # (f) Status-Server is answered here, with a Message-Authenticator.
        if code == Code.STATUS_SERVER:
            reply = build_response(
                packet,
                _STATUS_REPLY[kind],
                b"",
                nas.secret.reveal(),
                message_authenticator=True,
                proxy_states=packet.get_all(PROXY_STATE),
            )
            cache.complete(key, reply, now)
            endpoint.send(reply, addr)
            self.counters.reply(reply[0], nas.name)
            return
        # (g) Everything else goes to the handler, as a task.
        handler = self._handlers[kind]
        if handler is None:
            cache.forget(key)
            self._drop(DropReason.UNEXPECTED_CODE, nas)
            return
        if len(self._tasks) >= self.settings.max_in_flight:
            cache.forget(key)
            self._drop(DropReason.OVERLOADED, nas)
            return
        request = Request(packet, nas, (addr[0], addr[1]), now, ma)
        fast = self._fast[kind]
        if fast is not None:
            try:
                result = fast.try_handle_now(request)
            except Exception as exc:
                self._handler_failed(request, key, exc)
                return
            if not isinstance(result, NotReady):
                self._finish(request, result, key, endpoint, addr)
                return
        task = asyncio.get_running_loop().create_task(
            self._run(handler, request, key, endpoint, addr)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _authentic(self, packet: Packet, nas: Nas, now: float) -> bool | DropReason | None:
        """The Message-Authenticator state of a request, or why it must be dropped."""
        secret = nas.secret.reveal()
        if packet.code == Code.ACCOUNTING_REQUEST:
            # RFC 2866 section 3: the Request Authenticator of an
            # Accounting-Request is an MD5 over the packet and the secret.
            if not request_authenticator_ok(packet, secret):
                return DropReason.BAD_AUTHENTICATOR
            # Optional here; when present it must verify like any other.
            ma = message_authenticator_ok(packet, secret)
            return DropReason.BAD_MESSAGE_AUTHENTICATOR if ma is False else ma
        ma = message_authenticator_ok(packet, secret)
        if ma is False:
            # RFC 3579 section 3.2: a receiver MUST silently discard a packet
            # whose Message-Authenticator does not verify.
            return DropReason.BAD_MESSAGE_AUTHENTICATOR
        if ma is True:
            return True
        if packet.code == Code.STATUS_SERVER:
            # RFC 5997 section 3: Status-Server packets MUST carry a
            # Message-Authenticator; without one the packet is discarded.
            return DropReason.MISSING_MESSAGE_AUTHENTICATOR
        policy = nas.ma_policy
        if policy is MessageAuthenticatorPolicy.REQUIRE:
            return DropReason.MISSING_MESSAGE_AUTHENTICATOR
        if policy is MessageAuthenticatorPolicy.OBSERVE:
            self.counters.ma_missing_observed += 1
            last = self._ma_warned.get(nas.id)
            if last is None or now - last >= self.settings.ma_warning_interval:
                self._ma_warned[nas.id] = now
                self._log.warning("message_authenticator_missing", nas=nas.name)
        return None

    async def _run(
        self, handler: Handler, request: Request, key: CacheKey, endpoint: Endpoint, addr: Any
    ) -> None:
        try:
            reply = await handler.handle(request)
            self._finish(request, reply, key, endpoint, addr)
        except asyncio.CancelledError:
            self._cache.forget(key)
            raise
        except Exception as exc:
            self._handler_failed(request, key, exc)

    def _handler_failed(self, request: Request, key: CacheKey, exc: Exception) -> None:
        # No reply and no cache entry: the NAS's retransmission is tried again.
        # Only the exception type is logged: messages may hold personal values.
        self._cache.forget(key)
        self._drop(DropReason.HANDLER_ERROR, request.nas)
        self._log.error("handler_error", nas=request.nas.name, error=type(exc).__name__)

    def _finish(
        self, request: Request, reply: Reply | None, key: CacheKey, endpoint: Endpoint, addr: Any
    ) -> None:
        """Encode, cache and send a handler's reply; None or no code sends nothing."""
        now = self._clock()
        packet = request.packet
        nas = request.nas
        code = reply.code if reply is not None else None
        if code is None:
            # No reply: forget the key so the NAS's retransmission is processed again.
            self._cache.complete(key, None, now)
            data = None
        elif code not in _REPLIES[packet.code]:
            self._cache.complete(key, None, now)
            self._drop(DropReason.HANDLER_ERROR, nas)
            self._log.error("handler_bad_reply_code", nas=nas.name, code=packet.code, result=code)
            return
        else:
            assert reply is not None
            # RFC 2865 section 5.33: Proxy-State attributes MUST be copied
            # unmodified and in order into the response.
            data = build_response(
                packet,
                code,
                reply.attributes,
                nas.secret.reveal(),
                message_authenticator=code in _ACCESS_REPLIES,
                proxy_states=packet.get_all(PROXY_STATE),
            )
            delay = self.settings.reject_delay
            if code == Code.ACCESS_REJECT and delay > 0:
                # The key stays in progress until the reject is sent, so a
                # retransmission meanwhile is dropped (duplicate_in_progress)
                # rather than answered ahead of the delay.
                loop = asyncio.get_running_loop()
                handle = loop.call_later(delay, self._send_delayed, key)
                self._delayed[key] = _DelayedReject(handle, data, endpoint, addr, nas.name)
                self.counters.rejects_delayed += 1
            else:
                self._cache.complete(key, data, now)
                endpoint.send(data, addr)
                self.counters.reply(code, nas.name)
        if self.settings.log_requests:
            self._log.info(
                "request",
                nas=nas.name,
                packet=CODE_NAMES.get(packet.code, str(packet.code)),
                result=CODE_NAMES.get(code, str(code)) if code is not None else "no-reply",
                reason=reply.reason if reply is not None else "",
                user_name=reply.user_name if reply is not None else None,
                latency_ms=round((now - request.received_at) * 1000.0, 3),
            )

    def _send_delayed(self, key: CacheKey) -> None:
        """Send a held-back Access-Reject (its timer fired, or the server stops)."""
        pending = self._delayed.pop(key, None)
        if pending is None:
            return
        pending.handle.cancel()
        self._cache.complete(key, pending.data, self._clock())
        pending.endpoint.send(pending.data, pending.addr)
        self.counters.reply(Code.ACCESS_REJECT, pending.nas_name)


@dataclass(frozen=True, slots=True)
class _DelayedReject:
    """An encoded Access-Reject waiting for its timer, and where it goes."""

    handle: asyncio.TimerHandle
    data: bytes = field(repr=False)
    endpoint: Endpoint
    addr: Any = field(repr=False)  # the NAS address stays out of reprs
    nas_name: str
