"""Compression streams, hashing streams, and the seal/open_sealed pipeline."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO, cast

import pytest
import zstandard

from include.backup.errors import IntegrityError, KeyNotFoundError
from include.backup.pipeline.compression import (
    compress_writer,
    copy_compress,
    decompress_reader,
)
from include.backup.pipeline.crypto import TAG_SIZE, decrypt_stream, read_header
from include.backup.pipeline.hashing import CountingWriter, HashingReader, HashingWriter, sha256_file
from include.backup.pipeline.stream import SealResult, open_sealed, seal

KEK = bytes(range(32))
KEY_ID = "k-test"
CHUNK = 256


def keys(key_id: str) -> bytes:
    return {KEY_ID: KEK}[key_id]


def text(size: int) -> bytes:
    """Compressible, dump-like bytes of exactly ``size`` bytes."""
    line = b"42\tAlice\tSmith\talice.smith@example.com\t2024-01-01 10:00:00+00\n"
    rnd = os.urandom(max(1, size // 8)).hex().encode()
    out = (line * (size // len(line) + 1))[: size // 2] + rnd
    return out[:size].ljust(size, b"x")


class NoClose(io.BytesIO):
    def close(self) -> None:  # pragma: no cover - must not be called
        raise AssertionError("destination was closed")


def compress(data: bytes, algo: str, level: int = 3) -> bytes:
    out = NoClose()
    with compress_writer(out, algo, level) as w:
        w.write(data)
    return out.getvalue()


# -- compression ------------------------------------------------------------------------------

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 1000, 3 << 20]


@pytest.mark.parametrize("algo", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("size", SIZES)
def test_compression_round_trip(algo: str, size: int) -> None:
    data = text(size)
    packed = compress(data, algo)
    assert decompress_reader(io.BytesIO(packed), algo).read() == data


def test_zstd_is_standard_and_multithreaded_output_readable() -> None:
    data = text(5 << 20)
    packed = compress(data, "zstd")
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed)).read() == data
    assert len(packed) < len(data) / 2
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-dc"], input=packed, capture_output=True, check=True)
        assert out.stdout == data


def test_gzip_is_standard() -> None:
    data = text(100_000)
    packed = compress(data, "gzip", 6)
    assert gzip.decompress(packed) == data
    # and we read what the stdlib writes, including multi-member files
    assert decompress_reader(io.BytesIO(gzip.compress(data) * 2), "gzip").read() == data * 2


def test_concatenated_zstd_frames_are_read() -> None:
    a, b = text(1000), text(2000)
    packed = compress(a, "zstd") + compress(b, "zstd")
    assert decompress_reader(io.BytesIO(packed), "zstd").read() == a + b


@pytest.mark.parametrize("algo", ["zstd", "gzip"])
@pytest.mark.parametrize("cut", [0, 1, 5, -20, -1])
def test_truncated_stream_raises(algo: str, cut: int) -> None:
    data = os.urandom(50_000) + text(50_000)
    packed = compress(data, algo)
    with pytest.raises(IntegrityError, match=rf"(truncated|corrupt) {algo} stream"):
        decompress_reader(io.BytesIO(packed[:cut]), algo).read()


@pytest.mark.parametrize("algo", ["zstd", "gzip"])
def test_corrupt_stream_raises(algo: str) -> None:
    packed = bytearray(compress(text(200_000), algo))
    packed[len(packed) // 2] ^= 0xFF
    packed[len(packed) // 2 + 7] ^= 0xFF
    with pytest.raises(IntegrityError, match=rf"{algo} stream"):
        decompress_reader(io.BytesIO(bytes(packed)), algo).read()


@pytest.mark.parametrize("algo", ["zstd", "gzip"])
def test_trailing_garbage_raises(algo: str) -> None:
    packed = compress(text(10_000), algo) + b"not a frame at all"
    with pytest.raises(IntegrityError):
        decompress_reader(io.BytesIO(packed), algo).read()


def test_unknown_algorithm() -> None:
    expected = "unknown compression algorithm 'lz4': use one of zstd, gzip, none"
    with pytest.raises(ValueError, match=expected), compress_writer(io.BytesIO(), "lz4"):
        pass
    with pytest.raises(ValueError, match="zstd, gzip, none"):
        decompress_reader(io.BytesIO(), "brotli")


def test_invalid_levels() -> None:
    with pytest.raises(ValueError, match="gzip level"):
        compress(b"x", "gzip", 12)
    with pytest.raises(ValueError, match="zstd level"):
        compress(b"x", "zstd", 30)


@pytest.mark.parametrize("algo", ["zstd", "gzip"])
def test_exception_inside_writer_leaves_frame_unfinished(algo: str) -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), compress_writer(out, algo) as w:
        w.write(os.urandom(300_000))
        raise RuntimeError("source failed")
    with pytest.raises(IntegrityError, match="truncated|corrupt"):
        decompress_reader(io.BytesIO(out.getvalue()), algo).read()
    assert not out.closed


def test_close_inside_block_is_allowed_and_dst_stays_open() -> None:
    out = io.BytesIO()
    with compress_writer(out, "zstd") as w:
        w.write(b"abc")
        w.close()
    assert not out.closed
    assert decompress_reader(io.BytesIO(out.getvalue()), "zstd").read() == b"abc"


def test_highly_compressible_input_reads_in_bounded_pieces() -> None:
    packed = compress(bytes(64 << 20), "zstd")
    reader = decompress_reader(io.BytesIO(packed), "zstd")
    largest = total = 0
    while piece := reader.read(1 << 30):
        largest = max(largest, len(piece))
        total += len(piece)
    assert total == 64 << 20
    assert largest <= 8 << 20


@pytest.mark.parametrize("algo", ["zstd", "gzip", "none"])
def test_copy_compress_counts(algo: str) -> None:
    data = text(2 << 20)
    out = io.BytesIO()
    raw, packed = copy_compress(io.BytesIO(data), out, algo, 3)
    assert raw == len(data)
    assert packed == len(out.getvalue())
    assert decompress_reader(io.BytesIO(out.getvalue()), algo).read() == data


# -- hashing ----------------------------------------------------------------------------------


def test_hashing_writer_and_reader() -> None:
    data = os.urandom(3_000_001)
    out = io.BytesIO()
    w = HashingWriter(out)
    for i in range(0, len(data), 100_003):
        w.write(data[i : i + 100_003])
    assert out.getvalue() == data
    assert w.sha256 == hashlib.sha256(data).hexdigest() and w.count == len(data)

    r = HashingReader(io.BytesIO(data))
    got = r.read(10) + r.read()
    assert got == data and r.sha256 == hashlib.sha256(data).hexdigest() and r.count == len(data)
    r2 = HashingReader(io.BytesIO(data))
    buf = io.BufferedReader(r2, 65536).read()  # type: ignore[arg-type]
    assert buf == data and r2.sha256 == hashlib.sha256(data).hexdigest()

    c = CountingWriter(io.BytesIO())
    c.write(b"abc")
    c.write(memoryview(b"defg"))
    assert c.count == 7


def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    data = os.urandom((5 << 20) + 3)
    p.write_bytes(data)
    assert sha256_file(p) == (hashlib.sha256(data).hexdigest(), len(data))
    p.write_bytes(b"")
    assert sha256_file(p) == (hashlib.sha256(b"").hexdigest(), 0)
    with pytest.raises(ValueError):
        sha256_file(p, block_size=10)


# -- seal / open_sealed -----------------------------------------------------------------------


def do_seal(data: bytes, algo: str, chunk_size: int = CHUNK) -> tuple[bytes, SealResult]:
    out = NoClose()
    result = seal(io.BytesIO(data), out, kek=KEK, key_id=KEY_ID, algo=algo, chunk_size=chunk_size)
    return out.getvalue(), result


@pytest.mark.parametrize("algo", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 37 * CHUNK + 11])
@pytest.mark.parametrize("kind", ["random", "text"])
def test_seal_round_trip(algo: str, size: int, kind: str) -> None:
    data = os.urandom(size) if kind == "random" else text(size)
    stored, result = do_seal(data, algo)
    assert result.raw_size == size
    assert result.stored_size == len(stored)
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.key_id == KEY_ID and result.chunk_size == CHUNK and result.compression == algo
    n_chunks = max(1, -(-result.compressed_size // CHUNK))
    assert len(stored) == read_header(io.BytesIO(stored)).size + result.compressed_size + TAG_SIZE * n_chunks
    assert open_sealed(io.BytesIO(stored), keys, algo).read() == data
    # The container plaintext is a standard compressed stream.
    plain = io.BytesIO()
    decrypt_stream(io.BytesIO(stored), plain, keys)
    assert len(plain.getvalue()) == result.compressed_size
    assert result.encryption.ciphertext_size == len(stored)


def test_seal_large_default_chunks() -> None:
    data = text(9 << 20) + os.urandom((2 << 20) + 5)
    stored, result = do_seal(data, "zstd", chunk_size=1 << 20)
    assert result.compressed_size < result.raw_size
    reader = open_sealed(io.BytesIO(stored), keys, "zstd")
    h = hashlib.sha256()
    while piece := reader.read(1 << 20):
        h.update(piece)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


class FailingSource(io.RawIOBase):
    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise OSError("connection to the database was lost")
        n = min(len(b), self._left)
        b[:n] = os.urandom(n)
        self._left -= n
        return n


@pytest.mark.parametrize("algo", ["zstd", "gzip"])
def test_failed_seal_leaves_output_that_does_not_open(algo: str) -> None:
    out = io.BytesIO()
    with pytest.raises(OSError, match="lost"):
        seal(cast(BinaryIO, FailingSource(3 << 20)), out, kek=KEK, key_id=KEY_ID, algo=algo, chunk_size=CHUNK)
    with pytest.raises(IntegrityError, match="final chunk missing"):
        open_sealed(io.BytesIO(out.getvalue()), keys, algo).read()


def test_open_sealed_errors() -> None:
    stored, result = do_seal(text(10_000), "zstd")
    with pytest.raises(KeyNotFoundError):
        open_sealed(io.BytesIO(stored), {"other": KEK}.__getitem__, "zstd")
    bad = bytearray(stored)
    bad[-30] ^= 1
    with pytest.raises(IntegrityError, match="failed authentication"):
        open_sealed(io.BytesIO(bytes(bad)), keys, "zstd").read()
    with pytest.raises(IntegrityError, match="final chunk missing"):
        full_chunks = (result.compressed_size - 1) // CHUNK
        boundary = read_header(io.BytesIO(stored)).size + full_chunks * (CHUNK + TAG_SIZE)
        open_sealed(io.BytesIO(stored[:boundary]), keys, "zstd").read()


def test_seal_to_real_file(tmp_path: Path) -> None:
    src = tmp_path / "dump.sql"
    src.write_bytes(text(4 << 20))
    dst = tmp_path / "payload"
    with open(src, "rb") as f, open(dst, "wb") as out:
        result = seal(f, out, kek=KEK, key_id=KEY_ID)
    assert sha256_file(dst) == (result.sha256, result.stored_size)
    with open(dst, "rb") as f:
        assert open_sealed(f, keys, "zstd").read() == src.read_bytes()


# -- adaptive zstd threading and pipeline failure handling ------------------------------------


@pytest.mark.parametrize("store", [False, True])
def test_zstd_adapts_to_incompressible_stretches(monkeypatch: pytest.MonkeyPatch, store: bool) -> None:
    from include.backup.pipeline import compression

    monkeypatch.setattr(compression, "_PROBE", 1 << 20)
    data = os.urandom(20 << 20) + text(12 << 20) + os.urandom(20 << 20) + b"tail"
    out = io.BytesIO()
    writer = compression.open_compress_writer(out, "zstd", 3, threads=2, store_incompressible=store)
    modes: list[str] = []
    for i in range(0, len(data), 1 << 20):
        writer.write(data[i : i + (1 << 20)])
        if not modes or modes[-1] != writer.mode:  # type: ignore[attr-defined]
            modes.append(writer.mode)  # type: ignore[attr-defined]
    writer.close()
    quiet = "store" if store else "st"
    # Worker threads report progress in 8 MiB jobs, so when exactly a switch happens
    # depends on timing; the order of modes does not.
    assert modes[:3] == ["mt", quiet, "mt"]
    assert writer.frames == len(modes)  # type: ignore[attr-defined]
    packed = out.getvalue()
    assert decompress_reader(io.BytesIO(packed), "zstd").read() == data
    assert (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed), read_across_frames=True).read() == data
    )
    if shutil.which("zstd"):
        res = subprocess.run(["zstd", "-dc"], input=packed, capture_output=True, check=True)
        assert res.stdout == data


RAW_CASES = [
    (size, piece)
    for size in (0, 1, 131071, 131072, 131073, 3 * 131072 + 5)
    for piece in (1000, 131072, 1 << 20)
]


@pytest.mark.parametrize("size, piece", RAW_CASES + [(0, 1), (1, 1), (999, 1)])
def test_raw_frame_writer_block_boundaries(size: int, piece: int) -> None:
    from include.backup.pipeline.compression import _RawFrameWriter

    data = os.urandom(size)
    out = io.BytesIO()
    w = _RawFrameWriter(out)
    for i in range(0, size, piece):
        w.write(data[i : i + piece])
    w.close()
    n_blocks = max(1, -(-size // 131072))
    assert len(out.getvalue()) == 6 + 3 * n_blocks + size
    assert decompress_reader(io.BytesIO(out.getvalue()), "zstd").read() == data
    assert zstandard.ZstdDecompressor().decompressobj().decompress(out.getvalue()) == data


def test_seal_single_threaded_zstd() -> None:
    data = text(3 << 20)
    out = io.BytesIO()
    seal(io.BytesIO(data), out, kek=KEK, key_id=KEY_ID, threads=0)
    assert open_sealed(io.BytesIO(out.getvalue()), keys, "zstd").read() == data


def pipeline_threads() -> set[str]:
    import threading

    return {t.name for t in threading.enumerate() if t.name.startswith("seal-")}


class FullDisk(io.RawIOBase):
    def __init__(self, room: int) -> None:
        self.data = bytearray()
        self._room = room

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        if len(self.data) + len(b) > self._room:
            raise OSError(28, "No space left on device")
        self.data += b
        return len(b)


def test_seal_reports_write_errors_and_stops_its_threads() -> None:
    dst = FullDisk(room=2 << 20)
    with pytest.raises(OSError, match="No space left"):
        seal(io.BytesIO(os.urandom(8 << 20)), cast(BinaryIO, dst), kek=KEK, key_id=KEY_ID, chunk_size=CHUNK)
    assert pipeline_threads() == set()
    with pytest.raises(IntegrityError):
        open_sealed(io.BytesIO(bytes(dst.data)), keys, "zstd").read()


def test_seal_rejects_bad_parameters_before_starting_threads() -> None:
    with pytest.raises(ValueError, match="unknown compression algorithm"):
        seal(io.BytesIO(b"x"), io.BytesIO(), kek=KEK, key_id=KEY_ID, algo="lz4")
    with pytest.raises(ValueError, match="must be 32 bytes"):
        seal(io.BytesIO(b"x"), io.BytesIO(), kek=b"short", key_id=KEY_ID)
    assert pipeline_threads() == set()


def test_seal_source_error_stops_threads() -> None:
    with pytest.raises(OSError, match="lost"):
        seal(cast(BinaryIO, FailingSource(5 << 20)), io.BytesIO(), kek=KEK, key_id=KEY_ID)
    assert pipeline_threads() == set()
