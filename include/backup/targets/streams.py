"""Byte streams the targets read and upload through: a range of an object fetched in
chunks (:class:`ChunkReader`) or from a streamed body (:class:`IterReader`), a slice of a
local file as a stream of its own (:class:`FileSlice`), and range clamping. Reads of a
file that an upload's progress watches count into it (include/backup/progress.py)."""

from __future__ import annotations

import io
from abc import abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from include.backup.progress import watcher


def clamp_range(target: str, offset: int, length: int | None, size: int) -> tuple[int, int]:
    """The ``[start, end)`` byte range of an object of ``size`` bytes that a read of
    ``length`` bytes (None: to the end) from ``offset`` covers. Past the end is empty."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"target '{target}': offset and length must be >= 0, got {offset}, {length}")
    start = min(offset, size)
    end = size if length is None else min(size, offset + length)
    return start, max(start, end)


def empty_stream() -> BinaryIO:
    return io.BytesIO(b"")


class BlockReader(io.RawIOBase):
    """A raw stream served from blocks of bytes that :meth:`_next_block` produces one at
    a time (None at the end): memory stays at one block."""

    def __init__(self) -> None:
        super().__init__()
        self._buf = memoryview(b"")

    @abstractmethod
    def _next_block(self) -> bytes | None: ...

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._buf:
            block = self._next_block()
            if block is None:
                return 0
            self._buf = memoryview(block)
        out = memoryview(buffer).cast("B")
        k = min(len(out), len(self._buf))
        out[:k] = self._buf[:k]
        self._buf = self._buf[k:]
        return k


class ChunkReader(BlockReader):
    """A raw stream over ``[start, end)`` of an object, fetched ``chunk`` bytes at a time
    by ``fetch(pos, n)`` (one ranged request each): memory stays at one chunk."""

    def __init__(
        self,
        fetch: Callable[[int, int], bytes],
        start: int,
        end: int,
        chunk: int,
        on_short: Callable[[int], BaseException],
    ) -> None:
        super().__init__()
        self._fetch = fetch
        self._pos = start
        self._end = end
        self._chunk = chunk
        self._on_short = on_short

    def _next_block(self) -> bytes | None:
        if self._pos >= self._end:
            return None
        n = min(self._chunk, self._end - self._pos)
        data = self._fetch(self._pos, n)
        if len(data) != n:
            # The object shrank (or was replaced) since we looked at its size.
            raise self._on_short(self._pos)
        self._pos += n
        return data

    def close(self) -> None:
        self._buf = memoryview(b"")
        super().close()


class IterReader(BlockReader):
    """A raw stream over an iterator of byte blocks (a streamed HTTP body, a socket),
    with ``expected`` bytes in all: ending early is an error, not a silent short read."""

    def __init__(
        self,
        blocks: Iterator[bytes],
        expected: int,
        on_short: Callable[[int], BaseException],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._blocks = blocks
        self._left = expected
        self._got = 0
        self._on_short = on_short
        self._on_close = on_close

    def _next_block(self) -> bytes | None:
        if self._left <= 0:
            return None
        block = next(self._blocks, None)
        if block is None:
            raise self._on_short(self._got)
        block = block[: self._left]
        self._left -= len(block)
        self._got += len(block)
        return block

    def close(self) -> None:
        if not self.closed and self._on_close is not None:
            try:
                self._on_close()
            finally:
                self._on_close = None
        super().close()


def buffered(raw: io.RawIOBase, buffer_size: int = 256 * 1024) -> BinaryIO:
    return cast(BinaryIO, io.BufferedReader(raw, buffer_size=buffer_size))


class FileSlice(io.RawIOBase):
    """``length`` bytes of a file from ``offset``, as a seekable stream of its own (its own
    file handle), so that parts of one file can be sent in parallel without reading them
    into memory. Positions are relative to the slice."""

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._offset = offset
        self._length = length
        self._pos = 0
        self._f.seek(offset)
        # An upload's progress; a client that reads a part twice (a checksum, a retry)
        # counts it once: only reads past the furthest position count.
        self._progress = watcher(path)
        self._furthest = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        else:
            new = self._length + pos
        self._pos = max(0, min(new, self._length))
        self._f.seek(self._offset + self._pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")[: self._length - self._pos]
        if not len(view):
            return 0
        n = self._f.readinto(view) or 0
        self._pos += n
        self._count()
        return n

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        if size is None or size < 0 or size > left:
            size = left
        data = self._f.read(size)
        self._pos += len(data)
        self._count()
        return data

    def _count(self) -> None:
        if self._progress is not None and self._pos > self._furthest:
            self._progress.add(self._pos - self._furthest)
            self._furthest = self._pos

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


def read_slice(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"{path} changed while it was being uploaded (short read at {offset})")
    progress = watcher(path)
    if progress is not None:
        progress.add(length)
    return data


