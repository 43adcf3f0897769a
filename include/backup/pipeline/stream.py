"""One-pass sealing of a payload: compress -> encrypt -> hash, and the way back.

``seal`` is what the backup DAG's dump/encrypt/checksum steps use to turn a source stream
into the object that is stored; ``open_sealed`` is what restore and deep verification use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from include.backup.pipeline.compression import (
    DEFAULT_ZSTD_THREADS,
    decompress_reader,
    open_compress_writer,
)
from include.backup.pipeline.crypto import (
    ALGORITHM,
    DEFAULT_CHUNK_SIZE,
    DecryptingReader,
    EncryptingWriter,
    EncryptResult,
    KeyLookup,
)
from include.backup.pipeline.hashing import HashingWriter

# Input block size. 4 MiB keeps zstd's multi-threaded jobs fed with few Python round trips.
READ_BLOCK = 4 << 20


@dataclass(frozen=True)
class SealResult:
    raw_size: int  # bytes read from the source
    compressed_size: int  # bytes out of the compressor (= container plaintext)
    stored_size: int  # bytes written to dst (= container size)
    sha256: str  # hex SHA-256 of the stored bytes
    compression: str
    key_id: str
    wrapped_key: str  # base64(wrap nonce || wrapped data key)
    chunk_size: int
    algorithm: str = ALGORITHM

    @property
    def encryption(self) -> EncryptResult:
        return EncryptResult(
            key_id=self.key_id,
            wrapped_key=self.wrapped_key,
            chunk_size=self.chunk_size,
            plaintext_size=self.compressed_size,
            ciphertext_size=self.stored_size,
        )


def _readinto(src: BinaryIO, mv: memoryview) -> int:
    readinto = getattr(src, "readinto", None)
    if readinto is not None:
        return readinto(mv) or 0
    data = src.read(len(mv)) or b""
    mv[: len(data)] = data
    return len(data)


def seal(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    kek: bytes,
    key_id: str,
    algo: str = "zstd",
    level: int = 3,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threads: int = DEFAULT_ZSTD_THREADS,
) -> SealResult:
    """Compress, encrypt and hash ``src`` into ``dst`` in one pass; ``dst`` stays open.

    Memory is bounded by a few chunks plus zstd's window, whatever the input size. On any
    error the container's final chunk is never written, so the partial output cannot be
    mistaken for a good backup (the caller should still delete it).
    """
    hasher = HashingWriter(dst)
    enc = EncryptingWriter(hasher, kek, key_id, chunk_size)  # type: ignore[arg-type]
    raw = 0
    try:
        comp = open_compress_writer(enc, algo, level, threads=threads)  # type: ignore[arg-type]
        buf = bytearray(READ_BLOCK)
        mv = memoryview(buf)
        while n := _readinto(src, mv):
            comp.write(mv[:n])
            raw += n
        comp.close()  # end of compressed frame; dst stays open
        enc.close()  # final chunk
    except BaseException:
        enc.abort()
        raise
    hasher.flush()
    result = enc.result
    assert result is not None
    return SealResult(
        raw_size=raw,
        compressed_size=result.plaintext_size,
        stored_size=hasher.count,
        sha256=hasher.sha256,
        compression=algo,
        key_id=result.key_id,
        wrapped_key=result.wrapped_key,
        chunk_size=result.chunk_size,
    )


def open_sealed(src: BinaryIO, keys: KeyLookup, algo: str = "zstd") -> BinaryIO:
    """Readable plaintext stream of a sealed object: decrypt, then decompress.

    Key problems raise at once (KeyNotFoundError, IntegrityError for a wrong KEK); damage
    in the body raises IntegrityError while reading. Only read to the end counts as
    verified: a reader that stops early has not checked the rest.
    """
    return decompress_reader(DecryptingReader(src, keys), algo)  # type: ignore[arg-type]
