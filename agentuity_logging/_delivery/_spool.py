"""The disk spool: records survive a crash, a restart or a long outage of the backend.

Layout of a spool directory::

    lock                      held (flock) by the one live process using the directory
    meta                      {"format": 1, "protocol": "datadog"}: a spool replays into one protocol
    ack                       two 32-byte slots: (sequence, segment, offset, crc32), newest valid wins
    000000000001.seg ...      append-only segments: 8-byte magic, then frames

A frame is ``<u32 length><u32 crc32><prepared record>``: the record exactly as the protocol
prepared it, so a replay needs no re-encoding. The worker appends each record before it is sent
and acknowledges it (persists the ``ack`` position) once the backend accepted or finally refused
it. A new process with the same directory replays everything after the ``ack`` position:
delivery is at least once (a crash between a send and its acknowledgement repeats that batch).

Crash safety: appends are plain ``write(2)`` calls (in the page cache at once, so a killed process
loses nothing) and are fsync'd every ``fsync_interval_s`` (the window a power cut can lose). A
torn final frame, from a crash in the middle of a write, fails its length or CRC check and is cut
off when the spool is opened. The ``ack`` file alternates between two checksummed slots, so a torn
acknowledgement falls back to the previous one (a few records sent twice, none lost).

Only the engine's worker thread uses a spool after it is opened; nothing here is thread-safe.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import time
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from agentuity_logging._errors import ConfigurationError
from agentuity_logging._internal import report_once

__all__ = ["DEFAULT_SPOOL_MAX_BYTES", "Spool", "SpoolBatch"]

#: Default bound of a spool's total size on disk.
DEFAULT_SPOOL_MAX_BYTES: Final = 512 * 1024 * 1024
#: Records appended in this process and still unsent are also kept in memory up to this size, so
#: the usual path (append, then send a moment later) never reads the disk back.
MEMORY_CACHE_BYTES: Final = 4 * 1024 * 1024

_FORMAT: Final = 1
_MAGIC: Final = b"ALSPOOL1"
_HEADER: Final = len(_MAGIC)
_FRAME: Final = struct.Struct("<II")
_FRAME_BYTES: Final = _FRAME.size
_ACK: Final = struct.Struct("<QQQ")
_ACK_SLOT_BYTES: Final = 32
_SUFFIX: Final = ".seg"
_READ_CHUNK_BYTES: Final = 1024 * 1024
_crc32: Final = zlib.crc32

#: A place in the spool: (segment number, byte offset just past a frame).
Pos = tuple[int, int]


@dataclass(slots=True)
class SpoolBatch:
    """Records read for sending, and where each one ends (what acknowledging it means)."""

    records: list[bytes]
    ends: list[Pos]
    size: int


def _segment_name(number: int) -> str:
    return f"{number:012d}{_SUFFIX}"


def _lock_directory(path: Path) -> int:
    """Open and lock ``path/lock`` for this process; a clear error when another one holds it."""
    lock_path = path / "lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                raise _in_use(path, fd) from None
        else:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _in_use(path, fd) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _in_use(path: Path, fd: int) -> ConfigurationError:
    try:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        holder = "unknown"
    return ConfigurationError(
        f"spool_dir {str(path)!r} is in use by another live shipper (process {holder}); "
        "give each process (and each shipper) its own spool_dir"
    )


def _unlock(fd: int) -> None:
    if sys.platform != "win32":
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


class Spool:
    """An append-only, size-bounded, crash-safe queue of prepared records in one directory.

    Args:
        directory: the spool directory (created if missing).
        protocol: the protocol name the records are prepared for; a directory written for another
            protocol is refused rather than replayed into the wrong backend.
        max_bytes: bound on the segments' total size; :meth:`append` refuses records beyond it.
        fsync_interval_s: how often :meth:`sync` is due while there are unsynced writes.
        segment_bytes: size after which a new segment starts (default: 1/16 of ``max_bytes``).

    Raises:
        ConfigurationError: the directory cannot be created, is locked by another live shipper, or
            holds records of another protocol.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        protocol: str,
        max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        fsync_interval_s: float = 1.0,
        segment_bytes: int | None = None,
    ) -> None:
        self.path = Path(directory)
        self.max_bytes = max_bytes
        self.fsync_interval_s = fsync_interval_s
        self.segment_bytes = segment_bytes or min(64 << 20, max(64 << 10, max_bytes // 16))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_directory(self.path)
        except OSError as exc:
            raise ConfigurationError(
                f"spool_dir {str(self.path)!r} is not usable: {exc.strerror or exc}"
            ) from None
        self._rfds: dict[int, int] = {}
        self._wfd = -1
        self._ack_fd = -1
        self._dir_fd = -1
        self.closed = False
        try:
            self._check_meta(protocol)
            self._recover()
        except BaseException:
            self._close_fds()
            _unlock(self._lock_fd)
            raise

    # --- opening -------------------------------------------------------------------------

    def _check_meta(self, protocol: str) -> None:
        meta_path = self.path / "meta"
        try:
            meta = orjson.loads(meta_path.read_bytes())
        except FileNotFoundError:
            meta = None
        except (OSError, orjson.JSONDecodeError):
            report_once(
                f"spool-meta:{self.path}",
                "spool %s: unreadable meta file, assuming it belongs to this shipper",
                self.path,
            )
            meta = None
        if isinstance(meta, dict) and meta.get("protocol") not in (None, protocol):
            raise ConfigurationError(
                f"spool_dir {str(self.path)!r} holds records prepared for {meta['protocol']!r}, "
                f"not {protocol!r}; give each shipper its own spool_dir"
            )
        if meta is None:
            tmp = self.path / "meta.tmp"
            tmp.write_bytes(orjson.dumps({"format": _FORMAT, "protocol": protocol}))
            os.replace(tmp, meta_path)

    def _segments(self) -> list[int]:
        stems = (name[: -len(_SUFFIX)] for name in os.listdir(self.path) if name.endswith(_SUFFIX))
        return sorted(int(stem) for stem in stems if stem.isdigit())

    def _read_ack(self) -> tuple[int, int, int] | None:
        try:
            data = (self.path / "ack").read_bytes()
        except FileNotFoundError:
            return None
        best: tuple[int, int, int] | None = None
        for slot in range(2):
            raw = data[slot * _ACK_SLOT_BYTES : slot * _ACK_SLOT_BYTES + _ACK.size + 4]
            if len(raw) < _ACK.size + 4:
                continue
            body, crc = raw[: _ACK.size], int.from_bytes(raw[_ACK.size :], "little")
            if _crc32(body) != crc:
                continue
            seq, segment, offset = _ACK.unpack(body)
            if best is None or seq > best[0]:
                best = (seq, segment, offset)
        return best

    def _recover(self) -> None:
        """Find the acknowledged position, cut a torn tail, count what is left to replay."""
        segments = self._segments()
        ack = self._read_ack()
        self._ack_seq = ack[0] if ack else 0
        if ack is not None and ack[1] in segments:
            ack_segment, ack_offset = ack[1], max(_HEADER, ack[2])
        else:
            # No acknowledgement (or one pointing at a segment already deleted): replay all there is.
            ack_segment, ack_offset = (segments[0] if segments else 1), _HEADER
        for number in segments:
            if number < ack_segment:
                with contextlib.suppress(OSError):
                    os.unlink(self.path / _segment_name(number))
        segments = [n for n in segments if n >= ack_segment]
        self._sizes: dict[int, int] = {}
        pending = 0
        pending_bytes = 0
        for index, number in enumerate(segments):
            last = index == len(segments) - 1
            start = ack_offset if number == ack_segment else _HEADER
            size, count, count_bytes, first = self._scan(number, start, last=last)
            if size is None:
                continue
            if number == ack_segment:
                ack_offset = first  # a frame boundary at or after the acknowledged offset
            self._sizes[number] = size
            pending += count
            pending_bytes += count_bytes
        if ack_segment not in self._sizes:
            ack_segment = min(self._sizes, default=ack_segment)
            ack_offset = _HEADER
        self._ack_pos: Pos = (ack_segment, ack_offset)
        self.pending = pending
        self.pending_bytes = pending_bytes
        #: Records the previous process left behind (what this process replays first).
        self.replayed = pending
        self.disk_bytes = sum(self._sizes.values())
        self._ack_fd = os.open(self.path / "ack", os.O_RDWR | os.O_CREAT, 0o644)
        self._dir_fd = os.open(self.path, os.O_RDONLY) if sys.platform != "win32" else -1
        last_segment = max(self._sizes, default=0)
        if last_segment and self._sizes[last_segment] < self.segment_bytes:
            self._wseg = last_segment
            self._wfd = os.open(self.path / _segment_name(last_segment), os.O_WRONLY | os.O_APPEND)
            self._woff = self._sizes[last_segment]
        else:
            self._new_segment(last_segment + 1 if last_segment else ack_segment)
        self._mem: deque[tuple[bytes, Pos]] = deque()
        self._mem_bytes = 0
        # The memory copy mirrors the disk only while it holds every unacknowledged record.
        self._mem_ok = pending == 0
        self._dirty = False
        self._new_file = False
        self._last_sync = time.monotonic()
        self._write_ack()

    def _scan(self, number: int, start: int, *, last: bool) -> tuple[int | None, int, int, int]:
        """Check one segment; return (valid size, records at/after ``start``, their bytes, first)."""
        path = self.path / _segment_name(number)
        try:
            data = path.read_bytes()
        except OSError as exc:
            report_once(f"spool-read:{path}", "spool %s: cannot read %s: %s", self.path, path, exc)
            return None, 0, 0, start
        if data[:_HEADER] != _MAGIC:
            if last and len(data) < _HEADER and _MAGIC.startswith(data):
                # Created, then killed before the magic was written: an empty segment.
                with open(path, "wb") as file:
                    file.write(_MAGIC)
                return _HEADER, 0, 0, _HEADER
            report_once(
                f"spool-corrupt:{path}", "spool %s: %s is not a spool segment, skipped", self.path, path
            )
            return None, 0, 0, start
        offset = _HEADER
        count = 0
        count_bytes = 0
        first = -1
        size = len(data)
        while offset + _FRAME_BYTES <= size:
            length, crc = _FRAME.unpack_from(data, offset)
            end = offset + _FRAME_BYTES + length
            if end > size or _crc32(data[offset + _FRAME_BYTES : end]) != crc:
                break
            if offset >= start:
                if first < 0:
                    first = offset
                count += 1
                count_bytes += length
            offset = end
        if first < 0:
            first = offset
        if offset < size:
            if last:
                # A torn final frame: the process died in the middle of a write. Cut it off.
                with open(path, "r+b") as file:
                    file.truncate(offset)
                report_once(
                    f"spool-torn:{path}",
                    "spool %s: cut %d bytes of a torn final record from %s",
                    self.path,
                    size - offset,
                    path.name,
                )
            else:
                report_once(
                    f"spool-corrupt:{path}",
                    "spool %s: %s is damaged after byte %d; the rest of it is skipped",
                    self.path,
                    path.name,
                    offset,
                )
        return offset, count, count_bytes, first

    def _new_segment(self, number: int) -> None:
        path = self.path / _segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        try:
            os.write(fd, _MAGIC)
        except OSError:
            os.close(fd)
            raise
        if self._wfd >= 0:
            # The finished segment is complete on disk before records move on to the next one.
            with contextlib.suppress(OSError):
                os.fsync(self._wfd)
            os.close(self._wfd)
        self._wfd = fd
        self._wseg = number
        self._woff = _HEADER
        self._sizes[number] = _HEADER
        self.disk_bytes += _HEADER
        self._new_file = True

    # --- writing -------------------------------------------------------------------------

    def append(self, records: Sequence[bytes]) -> int:
        """Append records in order; return how many fit (the rest would pass ``max_bytes``).

        A write error (disk full, I/O error) is reported once and counts as not fitting.
        """
        accepted = 0
        parts: list[bytes] = []
        chunk_start = self._woff
        pack = _FRAME.pack
        mem = self._mem
        try:
            for record in records:
                frame_bytes = _FRAME_BYTES + len(record)
                if self.disk_bytes + frame_bytes > self.max_bytes:
                    break
                if self._woff >= self.segment_bytes:
                    self._write(parts)
                    parts = []
                    chunk_start = self._woff
                    self._new_segment(self._wseg + 1)
                    chunk_start = self._woff
                parts.append(pack(len(record), _crc32(record)))
                parts.append(record)
                self._woff += frame_bytes
                self._sizes[self._wseg] = self._woff
                self.disk_bytes += frame_bytes
                if self._mem_ok:
                    mem.append((record, (self._wseg, self._woff)))
                    self._mem_bytes += len(record)
                accepted += 1
                self.pending += 1
                self.pending_bytes += len(record)
            self._write(parts)
        except OSError as exc:
            accepted -= self._undo(chunk_start, len(parts) // 2)
            report_once(
                f"spool-write:{self.path}",
                "spool %s: cannot write (%s); records wait in memory",
                self.path,
                exc.strerror or exc,
            )
        if self._mem_bytes > MEMORY_CACHE_BYTES:
            mem.clear()
            self._mem_bytes = 0
            self._mem_ok = False
        if accepted:
            self._dirty = True
        return accepted

    def _write(self, parts: list[bytes]) -> None:
        if not parts:
            return
        data = b"".join(parts)
        view = memoryview(data)
        while view:
            written = os.write(self._wfd, view)
            view = view[written:]

    def _undo(self, chunk_start: int, count: int) -> int:
        """Forget the last ``count`` records after a failed write (cut the file back)."""
        with contextlib.suppress(OSError):
            os.ftruncate(self._wfd, chunk_start)
        removed_bytes = self._woff - chunk_start
        self._woff = chunk_start
        self._sizes[self._wseg] = chunk_start
        self.disk_bytes -= removed_bytes
        self.pending -= count
        self.pending_bytes -= removed_bytes - count * _FRAME_BYTES
        if self._mem_ok:
            for _ in range(min(count, len(self._mem))):
                record, _pos = self._mem.pop()
                self._mem_bytes -= len(record)
        return count

    # --- reading and acknowledging -------------------------------------------------------

    def peek(self, max_records: int, max_bytes: int) -> SpoolBatch | None:
        """Return the oldest unacknowledged records (at least one, within the bounds), or ``None``."""
        if self.pending <= 0:
            return None
        if self._mem_ok and self._mem:
            records: list[bytes] = []
            ends: list[Pos] = []
            size = 0
            for record, pos in self._mem:
                if records and (len(records) >= max_records or size + len(record) > max_bytes):
                    break
                records.append(record)
                ends.append(pos)
                size += len(record)
            return SpoolBatch(records, ends, size)
        return self._read(max_records, max_bytes)

    def _read_fd(self, number: int) -> int:
        fd = self._rfds.get(number)
        if fd is None:
            fd = os.open(self.path / _segment_name(number), os.O_RDONLY)
            self._rfds[number] = fd
        return fd

    def _next_segment(self, number: int) -> int | None:
        later = [n for n in self._sizes if n > number]
        return min(later) if later else None

    def _read(self, max_records: int, max_bytes: int) -> SpoolBatch | None:
        records: list[bytes] = []
        ends: list[Pos] = []
        size = 0
        segment, offset = self._ack_pos
        while len(records) < max_records and size < max_bytes:
            segment_size = self._sizes.get(segment, 0)
            if offset >= segment_size:
                following = self._next_segment(segment)
                if following is None:
                    break
                segment, offset = following, _HEADER
                continue
            try:
                fd = self._read_fd(segment)
                buf = os.pread(fd, min(segment_size - offset, _READ_CHUNK_BYTES), offset)
                if len(buf) >= _FRAME_BYTES:
                    length = _FRAME.unpack_from(buf, 0)[0]
                    if _FRAME_BYTES + length > len(buf):  # one record larger than the chunk
                        buf = os.pread(fd, _FRAME_BYTES + length, offset)
            except OSError as exc:
                report_once(f"spool-read:{self.path}", "spool %s: cannot read back: %s", self.path, exc)
                break
            pos = 0
            damaged = False
            while pos + _FRAME_BYTES <= len(buf) and len(records) < max_records:
                length, crc = _FRAME.unpack_from(buf, pos)
                end = pos + _FRAME_BYTES + length
                if end > len(buf):
                    if pos == 0:
                        damaged = True  # shorter than its header says: the segment is damaged
                    break
                record = buf[pos + _FRAME_BYTES : end]
                if _crc32(record) != crc:
                    damaged = True
                    break
                if records and size + length > max_bytes:
                    break
                records.append(record)
                size += length
                ends.append((segment, offset + end))
                pos = end
                if size >= max_bytes:
                    break
            offset += pos
            if damaged:
                self._skip_damaged(segment, offset)
                if records:
                    break
                segment, offset = self._ack_pos
                continue
            if pos == 0:
                break
        if not records:
            return None
        return SpoolBatch(records, ends, size)

    def _skip_damaged(self, segment: int, offset: int) -> None:
        """Give up on the rest of a segment damaged after it was opened (recount what is left)."""
        report_once(
            f"spool-corrupt:{self.path}:{segment}",
            "spool %s: segment %d is damaged after byte %d; the rest of it is skipped",
            self.path,
            segment,
            offset,
        )
        self._sizes[segment] = offset
        if segment == self._wseg:
            self._new_segment(segment + 1)
        self._recount()

    def _recount(self) -> None:
        count = 0
        count_bytes = 0
        segment, offset = self._ack_pos
        for number in sorted(self._sizes):
            if number < segment:
                continue
            _size, found, found_bytes, _first = self._scan_range(
                number, offset if number == segment else _HEADER
            )
            count += found
            count_bytes += found_bytes
        self.pending = count
        self.pending_bytes = count_bytes

    def _scan_range(self, number: int, start: int) -> tuple[int, int, int, int]:
        end = self._sizes[number]
        try:
            data = os.pread(self._read_fd(number), end, 0)
        except OSError:
            return end, 0, 0, start
        offset, count, count_bytes = _HEADER, 0, 0
        while offset + _FRAME_BYTES <= len(data):
            length, crc = _FRAME.unpack_from(data, offset)
            stop = offset + _FRAME_BYTES + length
            if stop > len(data) or _crc32(data[offset + _FRAME_BYTES : stop]) != crc:
                self._sizes[number] = offset
                break
            if offset >= start:
                count += 1
                count_bytes += length
            offset = stop
        return offset, count, count_bytes, start

    def ack(self, batch: SpoolBatch, start: int, end: int) -> None:
        """Mark records ``[start:end)`` of ``batch`` as done (delivered or finally refused).

        Records are acknowledged in order: everything before ``start`` must be acknowledged already.
        """
        count = end - start
        if count <= 0:
            return
        if self._mem_ok:
            mem = self._mem
            for _ in range(min(count, len(mem))):
                record, _pos = mem.popleft()
                self._mem_bytes -= len(record)
        self.pending -= count
        self.pending_bytes -= sum(len(r) for r in batch.records[start:end])
        self._ack_pos = batch.ends[end - 1]
        self._drop_finished_segments()
        if self.pending <= 0:
            self.pending = 0
            self.pending_bytes = 0
            if not self._mem_ok:
                self._mem.clear()
                self._mem_bytes = 0
                self._mem_ok = True
            self._recycle_write_segment()
        self._write_ack()

    def _recycle_write_segment(self) -> None:
        """Everything is delivered: cut the current segment back to empty to free its space.

        The file is cut before the acknowledgement moves back to its start; a crash in between
        leaves an acknowledgement past the end of an empty segment, which recovery reads as empty.
        """
        if self._ack_pos[0] != self._wseg or self._woff <= _HEADER:
            return
        try:
            os.ftruncate(self._wfd, _HEADER)
        except OSError:
            return
        self.disk_bytes -= self._woff - _HEADER
        self._woff = _HEADER
        self._sizes[self._wseg] = _HEADER
        self._ack_pos = (self._wseg, _HEADER)

    def _drop_finished_segments(self) -> None:
        """Delete segments wholly before the acknowledged position (a batch may span several)."""
        segment, offset = self._ack_pos
        if segment != self._wseg and offset >= self._sizes.get(segment, 0):
            following = self._next_segment(segment)
            if following is not None:
                segment, offset = following, _HEADER
        self._ack_pos = (segment, offset)
        for number in [n for n in self._sizes if n < segment]:
            fd = self._rfds.pop(number, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path / _segment_name(number))
            self.disk_bytes -= self._sizes.pop(number)

    def _write_ack(self) -> None:
        self._ack_seq += 1
        segment, offset = self._ack_pos
        body = _ACK.pack(self._ack_seq, segment, offset)
        slot = (self._ack_seq % 2) * _ACK_SLOT_BYTES
        data = body + _crc32(body).to_bytes(4, "little")
        try:
            os.pwrite(self._ack_fd, data.ljust(_ACK_SLOT_BYTES, b"\0"), slot)
        except OSError as exc:
            report_once(
                f"spool-ack:{self.path}",
                "spool %s: cannot record deliveries (%s); a restart may send some twice",
                self.path,
                exc.strerror or exc,
            )
        self._dirty = True

    # --- durability and shutdown ---------------------------------------------------------

    @property
    def sync_due_at(self) -> float | None:
        """Monotonic time the next :meth:`sync` is due, or ``None`` when nothing is unsynced."""
        return self._last_sync + self.fsync_interval_s if self._dirty else None

    def sync(self) -> None:
        """fsync what was written since the last sync (the segment, the ack file, new names)."""
        if not self._dirty or self.closed:
            return
        try:
            os.fsync(self._wfd)
            os.fsync(self._ack_fd)
            if self._new_file and self._dir_fd >= 0:
                os.fsync(self._dir_fd)
            self._new_file = False
        except OSError as exc:
            report_once(
                f"spool-sync:{self.path}", "spool %s: fsync failed: %s", self.path, exc.strerror or exc
            )
        self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync, close the files and release the directory lock (idempotent)."""
        if self.closed:
            return
        self.sync()
        self.closed = True
        self._close_fds()
        _unlock(self._lock_fd)

    def abandon(self) -> None:
        """Drop the files without touching the lock: for a forked child, whose parent owns the spool."""
        if self.closed:
            return
        self.closed = True
        self._close_fds()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _close_fds(self) -> None:
        fds = [*self._rfds.values(), self._wfd, self._ack_fd, self._dir_fd]
        self._rfds.clear()
        self._wfd = self._ack_fd = self._dir_fd = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __repr__(self) -> str:
        return f"<Spool {str(self.path)!r} pending={self.pending} bytes={self.disk_bytes}>"
