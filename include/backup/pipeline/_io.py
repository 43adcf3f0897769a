"""A raw stream base for readers that produce data in blocks through ``read``."""

from __future__ import annotations

import io


class BlockReader(io.RawIOBase):
    """Subclasses implement ``read(size)``; readinto and readall are derived from it."""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        mv = memoryview(b).cast("B")
        data = self.read(len(mv))
        mv[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while data := self.read(1 << 30):
            parts.append(data)
        return b"".join(parts)


class BlockStream(BlockReader):
    """``read(size)`` served from the blocks that :meth:`_next_block` returns one at a time
    (None at the end; an empty block is skipped). A read that asks for at least the rest of
    a whole block gets that block itself, without a copy: the copy loops of a restore move
    hundreds of MB through these streams."""

    def __init__(self) -> None:
        super().__init__()
        self._block = b""
        self._pos = 0

    def _next_block(self) -> bytes | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        while self._pos >= len(self._block):
            block = self._next_block()
            if block is None:
                return b""
            self._block, self._pos = block, 0
        if self._pos == 0 and size >= len(self._block):
            out, self._block = self._block, b""  # hand over the whole block without a copy
            return out
        out = self._block[self._pos : self._pos + size]
        self._pos += len(out)
        return out
