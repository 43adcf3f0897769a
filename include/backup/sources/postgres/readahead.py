"""Reading a stream ahead of its consumer, on a thread of its own.

pg_dump writes into a pipe of 64 KiB. Read and compressed in turns on one thread, the pipe
fills while the compressor works, pg_dump stops, and its server backend stops behind it:
the dump and its compression take turns instead of overlapping (the shell pipeline
``pg_dump | zstd`` does not, zstd's own threads read ahead). :func:`read_ahead` drains the
pipe on a thread of its own into a few blocks of buffer, so pg_dump only waits when the
consumer is that many blocks behind.

A restore is the same the other way: decrypting and decompressing a backup, then writing
it to a spool file, a directory or pg_restore's stdin, in turns on one thread. The writes
of a spool are throttled by the kernel once the server's own writes have filled the page
cache with dirty pages. :class:`ReadAhead` decodes on the thread while the consumer writes.
"""

from __future__ import annotations

import fcntl
import queue
import threading
from collections.abc import Generator
from contextlib import suppress
from typing import IO

from include.backup.pipeline._io import BlockStream

PIPE_SIZE = 1 << 20
"""Asked-for pipe capacity (Linux F_SETPIPE_SZ): fewer, larger reads than the default 64 KiB."""

DEPTH = 8
"""Blocks read ahead at most: memory stays at DEPTH × the block size."""

_EOF = b""


def widen_pipe(pipe: IO[bytes], size: int = PIPE_SIZE) -> None:
    """Ask the kernel for a larger pipe; where it refuses (a limit, not Linux), keep it."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with suppress(OSError):
            fcntl.fcntl(pipe.fileno(), setpipe, size)


class _Reader(threading.Thread):
    def __init__(self, pipe: IO[bytes], block_size: int, depth: int) -> None:
        super().__init__(name="pg-read-ahead", daemon=True)
        self.pipe = pipe
        self.block_size = block_size
        self.blocks: queue.Queue[bytes] = queue.Queue(maxsize=depth)
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                block = self.pipe.read(self.block_size)  # releases the GIL while it waits
                self._put(block)
                if not block:
                    return
        except BaseException as exc:  # handed to the consumer, raised in its thread
            self.error = exc
            self._put(_EOF)

    def _put(self, block: bytes) -> None:
        while not self.stopped.is_set():
            with suppress(queue.Full):
                self.blocks.put(block, timeout=0.2)
                return


def read_ahead(pipe: IO[bytes], block_size: int, depth: int = DEPTH) -> Generator[bytes, None, None]:
    """The blocks of ``pipe`` (each ``block_size`` bytes but the last), read on a thread
    up to ``depth`` blocks ahead of the caller. If the caller stops early (an error while
    it writes), the thread stops with it."""
    reader = _Reader(pipe, block_size, depth)
    reader.start()
    try:
        while True:
            block = reader.blocks.get()
            if not block:
                break
            yield block
        if reader.error is not None:
            raise reader.error
    finally:
        reader.stopped.set()
        reader.join(timeout=5)


class ReadAhead(BlockStream):
    """A readable stream of ``src`` read ahead on a thread (:func:`read_ahead`), for
    consumers that want a file (tarfile, copy loops). ``src`` is read to its end by the
    thread: its errors (a failed authentication) are raised from this stream's ``read``.
    Close it to stop the thread when stopping early."""

    def __init__(self, src: IO[bytes], block_size: int, depth: int = DEPTH) -> None:
        super().__init__()
        self._blocks = read_ahead(src, block_size, depth)

    def _next_block(self) -> bytes | None:
        return next(self._blocks, None)

    def close(self) -> None:
        self._blocks.close()  # stops the thread if the stream was not read to its end
        super().close()
