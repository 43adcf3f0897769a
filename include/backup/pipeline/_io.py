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
