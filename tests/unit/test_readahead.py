"""ReadAhead: a restore's backup stream decoded on a thread while the caller writes."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from include.backup.errors import IntegrityError
from include.backup.sources.postgres.readahead import ReadAhead


class Failing(io.RawIOBase):
    """The first ``good`` bytes, then the error a damaged container raises."""

    def __init__(self, good: bytes) -> None:
        self._src = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        data = self._src.read(size)
        if not data:
            raise IntegrityError("chunk 3 failed authentication")
        return data


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pg-read-ahead"]


def test_reads_the_same_bytes_in_any_read_size() -> None:
    data = os.urandom(3 * 65536 + 17)
    for size in (1, 1000, 65536, 1 << 20):
        with ReadAhead(io.BytesIO(data), 65536) as ahead:
            parts = []
            while part := ahead.read(size):
                assert len(part) <= size
                parts.append(part)
        assert b"".join(parts) == data


def test_a_damaged_stream_fails_the_reader_after_the_good_bytes() -> None:
    good = os.urandom(200_000)
    ahead = ReadAhead(Failing(good), 65536)
    with pytest.raises(IntegrityError, match="authentication"):
        got = b""
        while part := ahead.read(65536):
            got += part
    assert got == good  # everything before the damage came through, in order
    ahead.close()


def test_a_spool_of_a_damaged_stream_fails(tmp_path: Path) -> None:
    damaged = Failing(os.urandom(100_000))
    with pytest.raises(IntegrityError), open(tmp_path / "out", "wb") as f, ReadAhead(damaged, 4096) as ahead:
        shutil.copyfileobj(ahead, f, 4096)


def test_tarfile_extracts_through_it(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("toc.dat", "3456.dat"):
            body = os.urandom(70_000)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    buf.seek(0)
    with ReadAhead(io.BytesIO(buf.getvalue()), 8192) as ahead, tarfile.open(fileobj=ahead, mode="r|") as tar:
        tar.extractall(tmp_path, filter="data")
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert (tmp_path / member.name).read_bytes() == extracted.read()


def test_closing_early_stops_the_thread() -> None:
    before = len(reader_threads())
    ahead = ReadAhead(io.BytesIO(os.urandom(1 << 20)), 4096, depth=2)
    assert ahead.read(10)
    assert len(reader_threads()) == before + 1  # blocked: the queue holds 2 blocks
    ahead.close()
    assert len(reader_threads()) == before
