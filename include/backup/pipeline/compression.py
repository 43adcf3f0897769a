"""Streaming compression: zstd (default) and gzip (for compatibility), plus "none".

Why one module of about 500 lines: the writers and readers of three codecs behind one
factory each, whose stream contracts (flush, close, abort, multi-frame zstd) must stay
alike; they are easier to keep alike side by side.

Writers push compressed bytes into a destination stream as they go; readers pull
decompressed bytes from a source stream. Neither ever holds a whole payload in memory.

Two rules the rest of the pipeline relies on:

* Finishing a compressed stream never closes the destination (the caller owns it), and a
  stream that was abandoned because of an error is *not* finished: its output then lacks
  the end-of-frame marker, so nobody can mistake it for a complete payload.
* Readers raise :class:`~include.backup.errors.IntegrityError` when the compressed data is
  corrupt or ends early. ``zstandard``'s own stream reader silently returns a short result
  for a truncated frame, which is why the zstd reader here is built on ``decompressobj``.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Protocol, cast

import zstandard

from include.backup.errors import IntegrityError
from include.backup.pipeline._io import BlockStream
from include.backup.pipeline.hashing import CountingWriter

ALGORITHMS = ("zstd", "gzip", "none")

# zstd workers. 2 matches the `zstd -3 -T2` baseline; more only helps on hosts with spare
# cores, and Airflow workers usually run several tasks side by side.
DEFAULT_ZSTD_THREADS = 2

# Size of the pieces handed to the next stage. Large pieces amortise per-call overhead in
# the Python layers (encryption, hashing, file writes); 1 MiB measured faster than zstd's
# 128 KiB default and matches the default container chunk.
_OUT_PIECE = 1 << 20
_IN_BLOCK = 1 << 20

# Readers aim to produce at most this much output per step, so memory stays bounded even
# for absurd compression ratios (a zstd stream of zeros expands ~30000x).
_TARGET_OUT = 4 << 20


class _Writable(Protocol):
    def write(self, b: bytes | bytearray | memoryview, /) -> int | None: ...


def _check_algo(algo: str) -> str:
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown compression algorithm {algo!r}: use one of {', '.join(ALGORITHMS)}")
    return algo


def check_compression(algo: str, level: int) -> None:
    """Raise ValueError if ``algo`` or ``level`` is not usable."""
    _check_algo(algo)
    if algo != "none":
        _check_level(algo, level)


def _check_level(algo: str, level: int) -> None:
    if algo == "zstd" and not (-7 <= level <= 22 and level != 0):
        raise ValueError(f"zstd level must be 1..22 (or -7..-1 for fast modes), got {level}")
    if algo == "gzip" and not 1 <= level <= 9:
        raise ValueError(f"gzip level must be 1..9, got {level}")


class _GzipWriter(io.RawIOBase):
    """gzip member writer on top of zlib.

    Used instead of :class:`gzip.GzipFile` because GzipFile writes its trailer when it is
    garbage-collected, which would turn an aborted stream into a valid-looking one.
    """

    def __init__(self, dst: _Writable, level: int) -> None:
        super().__init__()
        self._dst = dst
        # wbits=31: gzip container (RFC 1952) with a fixed header (mtime 0), so output is
        # reproducible and readable by `gzip -d`.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._finished = False

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._finished or self.closed:
            raise ValueError("write to a finished gzip stream")
        out = self._z.compress(b)
        if out:
            self._dst.write(out)
        return len(memoryview(b).cast("B"))

    def close(self) -> None:
        if not self._finished and not self.closed:
            self._finished = True
            self._dst.write(self._z.flush(zlib.Z_FINISH))
        super().close()

    def __del__(self) -> None:
        # Deliberately do not finish the stream on garbage collection (see class docstring).
        pass


class _PassThroughWriter(io.RawIOBase):
    """``algo="none"``: bytes go straight through; closing does not close ``dst``."""

    def __init__(self, dst: _Writable) -> None:
        super().__init__()
        self._dst = dst

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed stream")
        self._dst.write(b)
        return len(memoryview(b).cast("B"))

    def __del__(self) -> None:
        pass


# Adaptive threading: every _PROBE input bytes the ratio of what zstd compressed since the
# last probe is checked. Incompressible data (already compressed uploads, encrypted files)
# gains nothing from worker threads but costs their overhead (measured: ~1.8x the CPU of one
# thread on random bytes), so such stretches are compressed on the calling thread, or, with
# ``store_incompressible``, stored as raw zstd blocks without compressing at all (zstd
# itself emits raw blocks for data it cannot shrink; skipping the futile match search
# saves ~0.3 CPU-s per GiB). A switch ends the current zstd frame and starts a new one:
# concatenated frames are standard zstd, read as one stream by every decoder (ours,
# `zstd -d`).
_PROBE = 32 << 20
_INCOMPRESSIBLE = 0.97  # above this (out/in) leave multi-threaded compression
_COMPRESSIBLE = 0.90  # below this go back to it
_SAMPLE = 1 << 20  # in store mode, this much of the input is test-compressed at each probe

# A zstd frame of raw blocks (RFC 8878): magic, Frame_Header_Descriptor 0x00 (no content
# size, no checksum, no dictionary, not single-segment), Window_Descriptor 0x38 (128 KiB
# window = the maximum block size), then blocks with a 3-byte little-endian header
# (size << 3 | type << 1 | last; type 0 = raw). Raw frames carry no checksum, which is why
# only callers whose output is authenticated anyway (seal: AES-GCM) enable them.
_RAW_FRAME_HEADER = b"\x28\xb5\x2f\xfd\x00\x38"
_RAW_BLOCK = 128 << 10


class _RawFrameWriter:
    """Writes its input as one zstd frame of raw (stored) blocks."""

    def __init__(self, dst: _Writable) -> None:
        self._dst = dst
        self._parts: list[bytes | memoryview] = [_RAW_FRAME_HEADER]
        self._size = len(_RAW_FRAME_HEADER)
        self._pending = b""  # the last block is held back: only close() knows it is last

    def _block(self, data: bytes | memoryview, last: bool) -> None:
        self._parts.append(((len(data) << 3) | int(last)).to_bytes(3, "little"))
        self._parts.append(data)
        self._size += 3 + len(data)
        if self._size >= _OUT_PIECE:
            self._flush()

    def _flush(self) -> None:
        if self._parts:
            # One join = the only copy; it also detaches us from the caller's buffer.
            self._dst.write(b"".join(self._parts))
            self._parts, self._size = [], 0

    def write(self, b: bytes | bytearray | memoryview) -> int:
        mv = memoryview(b).cast("B")
        n = len(mv)
        if self._pending:
            need = _RAW_BLOCK - len(self._pending)
            if n <= need:
                self._pending += bytes(mv)
                return n
            self._block(self._pending + bytes(mv[:need]), last=False)
            mv = mv[need:]
        while len(mv) > _RAW_BLOCK:
            self._block(mv[:_RAW_BLOCK], last=False)
            mv = mv[_RAW_BLOCK:]
        self._pending = bytes(mv)
        self._flush()
        return n

    def close(self) -> None:
        self._block(self._pending, last=True)  # may be an empty last block: still valid
        self._pending = b""
        self._flush()


class _AdaptiveZstdWriter(io.RawIOBase):
    """zstd writer: ``threads`` workers while data compresses; for incompressible stretches
    one thread, or raw blocks when ``store_incompressible``."""

    def __init__(self, dst: _Writable, level: int, threads: int, store_incompressible: bool) -> None:
        super().__init__()
        self._dst = dst
        self._level = level
        self._threads = threads
        self._store = store_incompressible
        self._since_probe = 0
        self.frames = 0
        self._sampler: zstandard.ZstdCompressor | None = None
        self._open("mt")

    def _open(self, mode: str) -> None:
        self.mode = mode  # "mt" (workers), "st" (calling thread) or "store" (raw blocks)
        self.frames += 1
        self._seen = (0, 0)  # (consumed, produced) at the last probe
        if mode == "store":
            self._w: object = _RawFrameWriter(self._dst)
            return
        self._cctx = zstandard.ZstdCompressor(
            level=self._level, threads=self._threads if mode == "mt" else 0, write_checksum=True
        )
        self._w = self._cctx.stream_writer(
            cast(BinaryIO, self._dst), write_size=_OUT_PIECE, closefd=False, write_return_read=True
        )

    def _switch(self, mode: str) -> None:
        self._w.close()  # type: ignore[attr-defined]  # ends the frame; dst stays open
        self._open(mode)

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a finished zstd stream")
        n = len(b) if type(b) is bytes else memoryview(b).nbytes
        self._since_probe += n
        if self._since_probe >= _PROBE:
            self._since_probe = 0
            if self.mode == "store" and self._sample_ratio(b) < _COMPRESSIBLE:
                self._switch("mt")
        self._w.write(b)  # type: ignore[attr-defined]
        if self._since_probe == 0 and self.mode != "store":
            self._probe()
        return n

    def _sample_ratio(self, b: bytes | bytearray | memoryview) -> float:
        sample = memoryview(b).cast("B")[:_SAMPLE]
        if self._sampler is None:
            self._sampler = zstandard.ZstdCompressor(level=1)
        return len(self._sampler.compress(sample)) / max(1, len(sample))

    def _probe(self) -> None:
        _, consumed, produced = self._cctx.frame_progression()
        done, out = consumed - self._seen[0], produced - self._seen[1]
        self._seen = (consumed, produced)
        if done < _PROBE // 2:
            return  # workers are still behind: too little evidence either way
        ratio = out / done
        if self.mode == "mt" and ratio > _INCOMPRESSIBLE:
            self._switch("store" if self._store else "st")
        elif self.mode == "st" and ratio < _COMPRESSIBLE:
            self._switch("mt")

    def close(self) -> None:
        if not self.closed:
            self._w.close()  # type: ignore[attr-defined]
        super().close()

    def __del__(self) -> None:
        pass  # never finish the frame implicitly (see module docstring)


def open_compress_writer(
    dst: _Writable,
    algo: str = "zstd",
    level: int = 3,
    *,
    threads: int = DEFAULT_ZSTD_THREADS,
    store_incompressible: bool = False,
) -> BinaryIO:
    """Return a writable stream compressing into ``dst``. ``close()`` finishes the frame
    (and does not close ``dst``); dropping it without ``close()`` leaves it unfinished.

    With zstd and ``threads > 0``, stretches of incompressible input are compressed on the
    calling thread, or stored as raw zstd blocks when ``store_incompressible`` (raw frames
    have no checksum: use it only when the output is authenticated, as seal() does).
    """
    _check_algo(algo)
    if algo == "none":
        return _PassThroughWriter(dst)  # type: ignore[return-value]
    _check_level(algo, level)
    if algo == "gzip":
        return _GzipWriter(dst, level)  # type: ignore[return-value]
    if threads > 0:
        return _AdaptiveZstdWriter(dst, level, threads, store_incompressible)  # type: ignore[return-value]
    cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    return cctx.stream_writer(  # type: ignore[return-value]
        cast(BinaryIO, dst), write_size=_OUT_PIECE, closefd=False, write_return_read=True
    )


@contextmanager
def compress_writer(
    dst: BinaryIO, algo: str = "zstd", level: int = 3, *, threads: int = DEFAULT_ZSTD_THREADS
) -> Iterator[BinaryIO]:
    """Context manager yielding a writable stream that compresses into ``dst``.

    Leaving the block normally (or calling ``close()`` inside it) finishes the frame;
    ``dst`` is never closed. Leaving it with an exception does *not* finish the frame, so
    a failed run cannot produce output that decompresses as if it were complete.
    ``threads`` is the number of zstd worker threads (ignored for gzip).
    """
    writer = open_compress_writer(dst, algo, level, threads=threads)
    try:
        yield writer
    except BaseException:
        raise  # abandon: no end-of-frame marker is written
    else:
        if not writer.closed:
            writer.close()


def _readinto_block(src: BinaryIO, mv: memoryview) -> int:
    readinto = getattr(src, "readinto", None)
    if readinto is not None:
        return readinto(mv) or 0
    data = src.read(len(mv)) or b""
    mv[: len(data)] = data
    return len(data)


def copy_compress(
    src: BinaryIO,
    dst: BinaryIO,
    algo: str = "zstd",
    level: int = 3,
    *,
    threads: int = DEFAULT_ZSTD_THREADS,
) -> tuple[int, int]:
    """Compress everything from ``src`` into ``dst``. Returns ``(raw bytes, compressed bytes)``."""

    counted = CountingWriter(dst)
    raw = 0
    buf = bytearray(_IN_BLOCK)
    mv = memoryview(buf)
    with compress_writer(counted, algo, level, threads=threads) as w:  # type: ignore[arg-type]
        while n := _readinto_block(src, mv):
            w.write(mv[:n])
            raw += n
    return raw, counted.count


class _DecompressingReader(BlockStream):
    """Pull-based decompressor with bounded memory and truncation detection.

    Subclasses supply ``_new()`` (start a fresh frame/member), ``_step(data) -> bytes``,
    ``_holds_input()`` (the decompressor still has fed-but-unprocessed input),
    ``_at_end()`` (the current frame/member is complete) and ``_leftover()`` (input fed
    past the end of that frame/member).
    """

    _name = "compressed"

    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._src = src
        self._pending = b""  # input read from src but not yet fed
        self._src_eof = False
        # Start tiny and grow: the ratio of the data is unknown until the first step.
        self._feed = 64
        self._consumed = 0  # compressed bytes fed so far, for error messages
        self._new()

    # -- subclass hooks ------------------------------------------------------------------
    def _new(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, data: bytes) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _holds_input(self) -> bool:
        return False

    def _at_end(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _leftover(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- reading -------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def _read_src(self) -> None:
        if not self._pending and not self._src_eof:
            data = self._src.read(_IN_BLOCK)
            if data:
                self._pending = bytes(data)
            else:
                self._src_eof = True

    def _next_block(self) -> bytes | None:
        """The next piece of output (never empty). None at a clean end of stream."""
        while True:
            if self._at_end():
                self._pending = self._leftover() + self._pending
                self._read_src()
                if not self._pending:
                    return None
                self._new()  # another frame/member follows: concatenated streams are valid
            if self._holds_input():
                piece = b""
            else:
                self._read_src()
                piece, self._pending = self._pending[: self._feed], self._pending[self._feed :]
                if not piece:
                    raise IntegrityError(
                        f"truncated {self._name} stream: input ended after {self._consumed} "
                        "bytes, in the middle of a frame; the stored object is incomplete"
                    )
            try:
                out = self._step(piece)
            except (zstandard.ZstdError, zlib.error) as exc:
                raise IntegrityError(
                    f"corrupt {self._name} stream near compressed byte {self._consumed}: {exc}; "
                    "the stored object is damaged"
                ) from exc
            self._consumed += len(piece)
            if piece:
                # Adapt the feed so one step yields about _TARGET_OUT bytes: bounded memory
                # for extreme ratios, few Python round trips for ordinary data.
                ratio = max(1, len(out) // len(piece))
                self._feed = max(64, min(_IN_BLOCK, _TARGET_OUT // ratio, self._feed * 4))
            if out:
                return out


class _ZstdReader(_DecompressingReader):
    _name = "zstd"

    def _new(self) -> None:
        self._zd = zstandard.ZstdDecompressor().decompressobj(write_size=_OUT_PIECE)

    def _step(self, data: bytes) -> bytes:
        return self._zd.decompress(data)

    def _at_end(self) -> bool:
        return bool(self._zd.eof)

    def _leftover(self) -> bytes:
        return bytes(self._zd.unused_data)


class _GzipReader(_DecompressingReader):
    _name = "gzip"

    def _new(self) -> None:
        self._zd = zlib.decompressobj(31)

    def _step(self, data: bytes) -> bytes:
        # max_length bounds the output of one call; zlib keeps the input it did not get to
        # in unconsumed_tail, which is fed again (with data == b"") before reading more.
        tail = self._zd.unconsumed_tail
        return self._zd.decompress(tail + data if tail else data, _TARGET_OUT)

    def _holds_input(self) -> bool:
        return bool(self._zd.unconsumed_tail)

    def _at_end(self) -> bool:
        return bool(self._zd.eof)

    def _leftover(self) -> bytes:
        return bytes(self._zd.unused_data)


class _PassThroughReader(io.RawIOBase):
    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._src = src

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        return bytes(self._src.read(size if size is not None else -1) or b"")

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return _readinto_block(self._src, memoryview(b).cast("B"))


def decompress_reader(src: BinaryIO, algo: str) -> BinaryIO:
    """Return a readable stream of the decompressed contents of ``src``.

    Raises :class:`IntegrityError` (while reading) if the data is corrupt or truncated.
    Closing the reader does not close ``src``.
    """
    _check_algo(algo)
    if algo == "zstd":
        return _ZstdReader(src)  # type: ignore[return-value]
    if algo == "gzip":
        return _GzipReader(src)  # type: ignore[return-value]
    return _PassThroughReader(src)  # type: ignore[return-value]
