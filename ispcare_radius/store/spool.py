"""Durable local spool of accounting records, for when PostgreSQL is down or slow.

Append-only segment files in one directory (mode 0700, files 0600), replayed
in order into the database. Imports aaa, privacy and store; never server or
cli. File work runs in threads so the event loop never blocks on a disk.

Layout: ``<first_seq>.seg`` segments, each opening with its own random data
key wrapped by the master key (as subscriber keys are), then frames of
``length | seq | crc32 | sealed record``; ``replay`` holds the sequence number
below which every record is in the database; ``lock`` keeps a second process
out. A segment's own key, not the epoch key, seals its records: epoch keys are
rotated and destroyed on schedule, and only the newest is loaded, while a
spooled record must stay readable until it is replayed.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ispcare_radius.aaa.accounting import AcctRecord
from ispcare_radius.aaa.ports import StoreUnavailable
from ispcare_radius.privacy.crypto import (
    DecryptError,
    DecryptFailure,
    FieldCipher,
    new_data_key,
    unwrap_key,
    wrap_key,
)
from ispcare_radius.privacy.keys import MasterKeys
from ispcare_radius.privacy.logsetup import get_logger
from ispcare_radius.store import spoolcodec as codec

_log = get_logger(__name__)

SEGMENT_SUFFIX: Final = ".seg"
REPLAY_FILE: Final = "replay"
LOCK_FILE: Final = "lock"
DEFAULT_SEGMENT_BYTES: Final = 64 << 20
_MIN_SEGMENT_BYTES: Final = 64 << 10
# Sealing adds the blob header, nonce and tag to every record body.
_SEAL_OVERHEAD: Final = 5 + 12 + 16
_FRAME_OVERHEAD: Final = codec.FRAME_HEAD.size + _SEAL_OVERHEAD


class SpoolFull(StoreUnavailable):
    """The spool reached its configured size: the record is refused, never dropped."""


class SpoolError(Exception):
    """The spool directory cannot be used (locked by another process, unreadable)."""


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: Path
    header_size: int
    size: int  # bytes durable on disk
    wrapped_key: bytes
    cipher: FieldCipher | None = None


@dataclass(frozen=True, slots=True)
class Spooled:
    """One record read back for replay; ``position`` is where the next frame starts."""

    seq: int
    record: AcctRecord
    position: tuple[int, int]  # (segment first_seq, file offset after this frame)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _write_file_atomic(directory: Path, name: str, data: bytes) -> None:
    """Replace ``directory/name`` with ``data``: temp file, fsync, rename, fsync the directory."""
    temp = directory / f".{name}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, directory / name)
    _fsync_dir(directory)


class Spool:
    """The spool directory: ``append`` (group-fsynced), ``read``/``advance`` for replay.

    Build with ``Spool.open`` (blocking; call before serving or in a thread).
    ``pending`` counts records not yet replayed, ``size`` the bytes on disk;
    ``appended`` and ``rejected`` (over ``max_bytes``) count appends.
    """

    def __init__(
        self,
        directory: Path,
        masters: MasterKeys,
        *,
        lock_fd: int,
        segments: list[_Segment],
        offset: int,
        next_seq: int,
        max_bytes: int,
        segment_bytes: int,
    ) -> None:
        self._dir = directory
        self._masters = masters
        self._lock_fd = lock_fd
        self._segments = segments
        self._offset = offset
        self._next_seq = next_seq
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._active: _Segment | None = None  # after a restart, appends start a new segment
        self._fd: int | None = None
        self._head: tuple[int, int] | None = None
        self._buffer: list[tuple[bytes, asyncio.Future[int]]] = []
        self._buffered_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._io = asyncio.Lock()
        self._broken = False
        self._closed = False
        self.appended = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"Spool(pending={self.pending}, size={self.size})"

    @property
    def pending(self) -> int:
        """Records appended (durably) and not yet replayed."""
        return self._next_seq - self._offset

    @property
    def size(self) -> int:
        """Bytes of the spool's segments on disk, plus those waiting for their fsync."""
        return sum(s.size for s in self._segments) + self._buffered_bytes

    @property
    def busy(self) -> bool:
        """Whether records are durable-but-unreplayed or waiting for their fsync."""
        return self.pending > 0 or bool(self._buffer) or self._flusher is not None

    # -- opening ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        masters: MasterKeys,
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
    ) -> Spool:
        """Open (creating) the spool in ``directory``; drop a torn tail and replayed segments."""
        if segment_bytes is None:
            # Several segments per spool, so replay frees space while it runs.
            segment_bytes = max(min(DEFAULT_SEGMENT_BYTES, max_bytes // 16), _MIN_SEGMENT_BYTES)
        if max_bytes < 1 or segment_bytes < 1:
            raise ValueError("max_bytes and segment_bytes must be positive")
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        lock_fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise SpoolError(f"spool directory {directory} is in use by another process") from None
        try:
            for temp in directory.glob(".*.tmp"):
                temp.unlink()
            offset = _read_offset(directory)
            segments = _load_segments(directory)
            next_seq = offset
            if segments:
                next_seq = _recover_tail(segments[-1])
                if segments[-1].size == segments[-1].header_size:
                    # No whole frame: appends start a segment of the same name.
                    segments.pop().path.unlink()
            if segments:
                offset = max(offset, segments[0].first_seq)
                for done in [s for s, n in itertools.pairwise(segments) if n.first_seq <= offset]:
                    done.path.unlink()
                    segments.remove(done)
                if next_seq <= offset:  # everything replayed
                    for seg in segments:
                        seg.path.unlink()
                    segments = []
            next_seq = max(next_seq, offset)
            if not segments:
                offset = next_seq
            _write_file_atomic(directory, REPLAY_FILE, codec.encode_replay_offset(offset))
        except BaseException:
            os.close(lock_fd)
            raise
        spool = cls(
            directory,
            masters,
            lock_fd=lock_fd,
            segments=segments,
            offset=offset,
            next_seq=next_seq,
            max_bytes=max_bytes,
            segment_bytes=segment_bytes,
        )
        if spool.pending:
            _log.info("spool_opened", pending=spool.pending, size=spool.size)
        return spool

    # -- appending --------------------------------------------------------

    async def append(self, record: AcctRecord) -> int:
        """Return the record's sequence number once it is fsynced; StoreUnavailable otherwise.

        Records appended during one turn of the event loop (and those that
        arrive while an fsync runs) share the next write and fsync.
        """
        if self._closed or self._broken:
            raise StoreUnavailable("accounting spool unavailable")
        body = codec.encode_record(record)
        cost = len(body) + _FRAME_OVERHEAD
        if self.size + cost > self._max_bytes:
            self.rejected += 1
            raise SpoolFull("accounting spool full")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buffer.append((body, future))
        self._buffered_bytes += cost
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        # Shielded: a caller that stops waiting does not unwrite the record.
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._buffer:
                batch, self._buffer = self._buffer, []
                self._buffered_bytes -= sum(len(b) + _FRAME_OVERHEAD for b, _ in batch)
                try:
                    async with self._io:
                        first = await asyncio.to_thread(self._write_batch, [b for b, _ in batch])
                except Exception as exc:
                    _log.error("spool_write_failed", error=type(exc).__name__, records=len(batch))
                    failure = StoreUnavailable(
                        f"accounting spool write failed ({type(exc).__name__})"
                    )
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(failure)
                    continue
                self.appended += len(batch)
                for i, (_, future) in enumerate(batch):
                    if not future.done():
                        future.set_result(first + i)
        finally:
            self._flusher = None

    def _write_batch(self, bodies: list[bytes]) -> int:
        """Seal, write and fsync ``bodies`` as consecutive frames (in a thread, under ``_io``)."""
        segment = self._active
        if segment is None or segment.size >= self._segment_bytes:
            segment = self._new_segment(self._next_seq)
        assert segment.cipher is not None and self._fd is not None
        first = self._next_seq
        frames = b"".join(
            codec.encode_frame(seq, segment.cipher.seal(body, codec.frame_aad(seq)))
            for seq, body in enumerate(bodies, first)
        )
        try:
            _write_all(self._fd, frames, segment.size)
            os.fsync(self._fd)
        except OSError:
            try:  # undo a partial write so the next frames follow whole ones
                os.ftruncate(self._fd, segment.size)
                os.fsync(self._fd)
            except OSError:
                # After a failed fsync the page cache cannot be trusted
                # (its dirty pages may be dropped): stop appending.
                self._broken = True
            raise
        segment.size += len(frames)
        self._next_seq = first + len(bodies)
        return first

    def _new_segment(self, first_seq: int) -> _Segment:
        """Create ``<first_seq>.seg`` with a fresh wrapped key, atomically, and make it active."""
        key = new_data_key()
        wrapped = wrap_key(self._masters, key, purpose=codec.segment_key_purpose(first_seq))
        header = codec.encode_segment_header(wrapped)
        name = f"{first_seq:020d}{SEGMENT_SUFFIX}"
        _write_file_atomic(self._dir, name, header)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._fd = os.open(self._dir / name, os.O_WRONLY)
        segment = _Segment(
            first_seq, self._dir / name, len(header), len(header), wrapped, FieldCipher(key, 1)
        )
        self._segments.append(segment)
        self._active = segment
        return segment

    # -- replay -----------------------------------------------------------

    async def read(self, limit: int) -> list[Spooled]:
        """Up to ``limit`` records from the replay offset on, in order (durable ones only)."""
        if self.pending == 0:
            return []
        return await asyncio.to_thread(self._read, limit, list(self._segments), self._head)

    def _read(
        self, limit: int, segments: list[_Segment], head: tuple[int, int] | None
    ) -> list[Spooled]:
        out: list[Spooled] = []
        for segment in segments:
            if head is not None and segment.first_seq < head[0]:
                continue
            start = head[1] if head is not None and head[0] == segment.first_seq else None
            out.extend(self._read_segment(segment, start, limit - len(out)))
            if len(out) >= limit:
                break
        return out

    def _read_segment(self, segment: _Segment, start: int | None, limit: int) -> list[Spooled]:
        cipher = self._cipher(segment)
        end = segment.size  # read no further than what is known durable
        out: list[Spooled] = []
        with segment.path.open("rb") as fh:
            position = segment.header_size if start is None else start
            fh.seek(position)
            while position < end and len(out) < limit:
                try:
                    length, seq, crc = codec.frame_head(fh.read(codec.FRAME_HEAD.size))
                    payload = fh.read(length)
                    codec.check_frame(length, seq, crc, payload)
                except codec.CodecError:
                    raise SpoolError(f"spool segment {segment.path.name} is corrupt") from None
                position += codec.FRAME_HEAD.size + length
                if seq < self._offset:
                    continue
                try:
                    body = cipher.open(payload, codec.frame_aad(seq))
                    record = codec.decode_record(body)
                except (DecryptError, codec.CodecError) as exc:
                    raise SpoolError(f"spool record {seq} does not open ({exc})") from None
                out.append(Spooled(seq, record, (segment.first_seq, position)))
        return out

    def _cipher(self, segment: _Segment) -> FieldCipher:
        if segment.cipher is None:
            purpose = codec.segment_key_purpose(segment.first_seq)
            try:
                key = unwrap_key(self._masters, segment.wrapped_key, purpose=purpose)
            except DecryptError as exc:
                if exc.reason is DecryptFailure.KEY_VERSION:
                    raise SpoolError(
                        f"spool segment {segment.path.name} needs a master key version"
                        " that is not loaded"
                    ) from None
                raise SpoolError(f"spool segment {segment.path.name} key does not open") from None
            segment.cipher = FieldCipher(key, 1)
        return segment.cipher

    async def advance(self, entry: Spooled) -> None:
        """Persist that every record up to ``entry`` is in the database; drop replayed segments."""
        async with self._io:
            await asyncio.to_thread(self._advance, entry)

    def _advance(self, entry: Spooled) -> None:
        offset = entry.seq + 1
        _write_file_atomic(self._dir, REPLAY_FILE, codec.encode_replay_offset(offset))
        self._offset = offset
        self._head = entry.position
        head_first = entry.position[0]
        for segment in [s for s in self._segments if s.first_seq < head_first]:
            segment.path.unlink()
            self._segments.remove(segment)
        current = self._segments[0] if self._segments else None
        if current is None or current.size != entry.position[1]:
            return
        if current is not self._active or (self.pending == 0 and not self._buffer):
            # Whole segment replayed and nothing more will be written to it.
            if current is self._active:
                if self._fd is not None:
                    os.close(self._fd)
                self._fd = None
                self._active = None
            current.path.unlink()
            self._segments.remove(current)
            self._head = None

    # -- closing ----------------------------------------------------------

    async def close(self) -> None:
        """Refuse new appends, finish the pending fsync, release the directory."""
        self._closed = True
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        async with self._io:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


def _read_offset(directory: Path) -> int:
    try:
        data = (directory / REPLAY_FILE).read_bytes()
    except FileNotFoundError:
        return 0
    try:
        return codec.decode_replay_offset(data)
    except codec.CodecError:
        # Replaying from the start is safe: the database drops duplicates.
        _log.warning("spool_replay_offset_unreadable")
        return 0


def _load_segments(directory: Path) -> list[_Segment]:
    segments: list[_Segment] = []
    for path in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")):
        try:
            first_seq = int(path.stem)
            with path.open("rb") as fh:
                wrapped, header_size = codec.decode_segment_header(fh.read(4096))
        except (ValueError, codec.CodecError):
            # Headers are written whole (temp file, then rename): this file
            # was not made by the spool. Keep it aside for the operator.
            _log.error("spool_segment_unrecognised", segment=path.name)
            path.rename(path.with_suffix(".unrecognised"))
            continue
        segments.append(
            _Segment(first_seq, path, header_size, path.stat().st_size, wrapped_key=wrapped)
        )
    segments.sort(key=lambda s: s.first_seq)
    return segments


def _recover_tail(segment: _Segment) -> int:
    """Cut a torn or unsynced tail off the last segment; return the next sequence number.

    A crash during an append can leave a partial frame, or whole frames after
    a gap: none of them was acknowledged (acknowledgement follows the fsync),
    so everything from the first frame that does not check out is dropped.
    """
    expected = segment.first_seq
    with segment.path.open("r+b") as fh:
        position = segment.header_size
        fh.seek(position)
        while True:
            head = fh.read(codec.FRAME_HEAD.size)
            if not head:
                break
            try:
                length, seq, crc = codec.frame_head(head)
                payload = fh.read(length)
                codec.check_frame(length, seq, crc, payload)
                if seq != expected:
                    raise codec.CodecError("frame out of sequence")
            except codec.CodecError:
                _log.warning("spool_torn_tail_dropped", segment=segment.path.name, seq=expected)
                fh.truncate(position)
                fh.flush()
                os.fsync(fh.fileno())
                break
            position += codec.FRAME_HEAD.size + length
            expected += 1
    segment.size = position
    return expected
