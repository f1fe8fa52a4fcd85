"""The disk spool: append, read back, acknowledge, recover from crashes, bound its size."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentuity_logging import ConfigurationError
from agentuity_logging._delivery import _spool
from agentuity_logging._delivery._spool import Spool
from agentuity_logging.shipping import DatadogShipper
from tests.fakes import FakeDatadog

from .shipping_support import (
    FAST_RETRY,
    ShipperFactory,
    attach,
    messages,
    poll_until,
    shipper_factory,
)


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


def records(n: int, start: int = 0) -> list[bytes]:
    return [b'{"message":"record %d"}' % i for i in range(start, start + n)]


def drain(spool: Spool, max_records: int = 1000) -> list[bytes]:
    """Read and acknowledge everything pending."""
    out: list[bytes] = []
    while (batch := spool.peek(max_records, 10_000_000)) is not None:
        out.extend(batch.records)
        spool.ack(batch, 0, len(batch.records))
    return out


def open_spool(path: Path, **kwargs: object) -> Spool:
    return Spool(path, protocol="datadog", **kwargs)  # type: ignore[arg-type]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


class TestAppendAndRead:
    def test_records_come_back_in_order(self, tmp_path: Path) -> None:
        """What is appended is read back unchanged and in order."""
        spool = open_spool(tmp_path)
        try:
            assert spool.append(records(50)) == 50
            assert drain(spool, max_records=7) == records(50)
            assert spool.pending == 0
        finally:
            spool.close()

    def test_peek_respects_the_batch_bounds(self, tmp_path: Path) -> None:
        """peek() returns at most max_records records and max_bytes bytes (at least one)."""
        spool = open_spool(tmp_path)
        try:
            spool.append(records(20))
            batch = spool.peek(5, 10_000)
            assert batch is not None
            assert len(batch.records) == 5
            small = spool.peek(100, 1)
            assert small is not None
            assert len(small.records) == 1
        finally:
            spool.close()

    def test_partial_acknowledgement_keeps_the_rest(self, tmp_path: Path) -> None:
        """Acknowledging the first half of a batch leaves the second half pending."""
        spool = open_spool(tmp_path)
        try:
            spool.append(records(10))
            batch = spool.peek(10, 10_000)
            assert batch is not None
            spool.ack(batch, 0, 4)
            assert spool.pending == 6
            assert drain(spool) == records(6, start=4)
        finally:
            spool.close()

    def test_reads_back_from_disk_past_the_memory_copy(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the in-memory copy overflows, records are read back from the segments."""
        monkeypatch.setattr(_spool, "MEMORY_CACHE_BYTES", 100)
        spool = open_spool(tmp_path)
        try:
            spool.append(records(200))
            assert not spool._mem_ok
            assert drain(spool, max_records=33) == records(200)
            assert spool._mem_ok
        finally:
            spool.close()


class TestReplay:
    def test_a_new_spool_replays_only_unacknowledged_records(self, tmp_path: Path) -> None:
        """Reopening the directory yields exactly what was not acknowledged."""
        spool = open_spool(tmp_path)
        spool.append(records(30))
        batch = spool.peek(10, 10_000)
        assert batch is not None
        spool.ack(batch, 0, 10)
        spool.close()
        again = open_spool(tmp_path)
        try:
            assert again.replayed == 20
            assert drain(again) == records(20, start=10)
        finally:
            again.close()

    def test_replay_survives_an_unclosed_spool(self, tmp_path: Path) -> None:
        """A spool never closed (a killed process) still replays: writes are not buffered."""
        spool = open_spool(tmp_path)
        spool.append(records(5))
        spool.abandon()  # like a crash: no sync, no unlock call
        again = open_spool(tmp_path)
        try:
            assert drain(again) == records(5)
        finally:
            again.close()

    def test_torn_final_record_is_cut_off(self, tmp_path: Path) -> None:
        """A half-written last frame (a crash mid-write) is removed; earlier records survive."""
        spool = open_spool(tmp_path)
        spool.append(records(3))
        spool.close()
        segment = segments(tmp_path)[-1]
        with segment.open("ab") as file:
            file.write(b"\x40\x00\x00\x00\x12\x34")  # a header promising 64 bytes, then nothing
        again = open_spool(tmp_path)
        try:
            assert drain(again) == records(3)
            assert again.append(records(1, start=3)) == 1
            assert drain(again) == records(1, start=3)
        finally:
            again.close()

    def test_corrupted_final_record_is_cut_off(self, tmp_path: Path) -> None:
        """A last frame whose checksum does not match is removed."""
        spool = open_spool(tmp_path)
        spool.append(records(3))
        spool.close()
        segment = segments(tmp_path)[-1]
        data = bytearray(segment.read_bytes())
        data[-2] ^= 0xFF
        segment.write_bytes(bytes(data))
        again = open_spool(tmp_path)
        try:
            assert drain(again) == records(2)
        finally:
            again.close()

    def test_torn_ack_slot_falls_back_to_the_previous_one(self, tmp_path: Path) -> None:
        """A damaged acknowledgement slot is ignored in favour of the other, older one."""
        spool = open_spool(tmp_path)
        spool.append(records(10))
        for _ in range(2):
            batch = spool.peek(3, 10_000)
            assert batch is not None
            spool.ack(batch, 0, 3)
        spool.close()
        ack = tmp_path / "ack"
        data = bytearray(ack.read_bytes())
        newest = max(range(2), key=lambda slot: int.from_bytes(data[slot * 32 : slot * 32 + 8], "little"))
        data[newest * 32 + 10] ^= 0xFF
        ack.write_bytes(bytes(data))
        again = open_spool(tmp_path)
        try:
            replayed = drain(again)
            assert replayed[-4:] == records(4, start=6)
            assert len(replayed) >= 4  # at least once: some may come again, none are lost
        finally:
            again.close()


class TestBounds:
    def test_append_refuses_past_max_bytes(self, tmp_path: Path) -> None:
        """The spool never grows beyond max_bytes; append says how many fit."""
        spool = open_spool(tmp_path, max_bytes=1 << 20, segment_bytes=64 << 10)
        try:
            big = [b"x" * 10_000] * 200
            accepted = spool.append(big)
            assert 90 < accepted < 105
            assert spool.disk_bytes <= 1 << 20
            assert spool.append(big[:1]) == 0
        finally:
            spool.close()

    def test_delivered_segments_are_deleted(self, tmp_path: Path) -> None:
        """Segments whose records are all acknowledged are removed from disk."""
        spool = open_spool(tmp_path, max_bytes=1 << 20, segment_bytes=64 << 10)
        try:
            spool.append([b"y" * 1000] * 500)
            assert len(segments(tmp_path)) >= 7
            drain(spool)
            assert len(segments(tmp_path)) == 1
            assert spool.disk_bytes < 64 << 10
        finally:
            spool.close()

    def test_room_freed_by_delivery_is_reused(self, tmp_path: Path) -> None:
        """After deliveries free segments, appends fit again."""
        spool = open_spool(tmp_path, max_bytes=1 << 20, segment_bytes=64 << 10)
        try:
            big = [b"z" * 10_000] * 200
            first = spool.append(big)
            drain(spool)
            assert spool.append(big[:first]) == first
        finally:
            spool.close()


class TestOwnership:
    def test_a_second_user_of_the_directory_is_refused(self, tmp_path: Path) -> None:
        """Two live spools on one directory: the second gets a clear error."""
        spool = open_spool(tmp_path)
        try:
            with pytest.raises(ConfigurationError, match="in use by another live shipper"):
                open_spool(tmp_path)
        finally:
            spool.close()

    def test_the_lock_is_released_on_close(self, tmp_path: Path) -> None:
        """After close() the directory can be opened again."""
        open_spool(tmp_path).close()
        open_spool(tmp_path).close()

    def test_a_spool_of_another_protocol_is_refused(self, tmp_path: Path) -> None:
        """Records prepared for one backend are never replayed into another."""
        open_spool(tmp_path).close()
        with pytest.raises(ConfigurationError, match="'datadog', not 'loki'"):
            Spool(tmp_path, protocol="loki")

    def test_an_unusable_directory_is_a_configuration_error(self, tmp_path: Path) -> None:
        """A spool_dir that cannot be created fails at construction."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        with pytest.raises(ConfigurationError, match="not usable"):
            open_spool(blocker / "spool")


class TestShipperWithSpool:
    def test_records_reach_the_backend_through_the_spool(
        self, tmp_path: Path, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """With a spool, records are written to disk, sent, then acknowledged."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, spool_dir=tmp_path)
        logger = attach(shipper)
        for i in range(100):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(100)]
        assert shipper.stats()["spooled"] == 0

    def test_a_new_shipper_replays_and_flush_waits_for_it(
        self, tmp_path: Path, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Records left by a closed shipper arrive from the next one, and its flush() waits."""
        fake_datadog.down()
        first = make(
            DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, spool_dir=tmp_path, **FAST_RETRY
        )
        logger = attach(first)
        for i in range(50):
            logger.info("record %d", i)
        assert not first.close(0.5)
        assert first.stats()["dropped"] == {}
        fake_datadog.up()
        second = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, spool_dir=tmp_path)
        assert second.flush(5)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(50)]

    def test_memory_stays_bounded_while_the_spool_absorbs_an_outage(
        self, tmp_path: Path, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """During an outage records move to disk: the memory queue stays small and none are lost."""
        fake_datadog.down()
        shipper = make(
            DatadogShipper,
            fake_datadog.api_key,
            url=fake_datadog.url,
            spool_dir=tmp_path,
            max_queue_records=500,
            max_batch_records=100,
            **FAST_RETRY,
        )
        logger = attach(shipper)
        for chunk in range(25):
            for i in range(chunk * 200, chunk * 200 + 200):
                logger.info("record %d", i)
            assert poll_until(lambda: shipper.stats()["queue_depth"] == 0, 5)
        stats = shipper.stats()
        assert stats["spooled"] == 5000
        assert stats["dropped"] == {}
        fake_datadog.up()
        assert shipper.flush(30)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(5000)]

    def test_auth_failure_keeps_records_in_the_spool(
        self, tmp_path: Path, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Refused credentials leave the records spooled for a process with the right key."""
        wrong = "wrong-key-abcdefghijklmnop"
        first = make(DatadogShipper, wrong, url=fake_datadog.url, spool_dir=tmp_path)
        logger = attach(first)
        for i in range(20):
            logger.info("record %d", i)
        assert not first.flush(3)
        assert first.stats()["spooled"] == 20
        first.close(0.5)
        second = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, spool_dir=tmp_path)
        assert second.flush(5)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(20)]

    def test_fsync_happens_within_the_interval(
        self, tmp_path: Path, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Appended records are fsync'd within spool_fsync_interval_s."""
        fake_datadog.down()
        shipper = make(
            DatadogShipper,
            fake_datadog.api_key,
            url=fake_datadog.url,
            spool_dir=tmp_path,
            spool_fsync_interval_s=0.1,
            **FAST_RETRY,
        )
        spool = shipper._engine._spool
        assert spool is not None
        attach(shipper).info("record")
        assert poll_until(lambda: spool.pending == 1 and spool.sync_due_at is None, 3)
        shipper.close(0)

    def test_spool_files_are_append_only_segments(
        self, tmp_path: Path, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """The directory holds the lock, meta, ack and numbered segment files."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, spool_dir=tmp_path)
        attach(shipper).info("record")
        assert shipper.flush(5)
        names = sorted(os.listdir(tmp_path))
        assert names[:3] == ["000000000001.seg", "ack", "lock"]
        assert "meta" in names
