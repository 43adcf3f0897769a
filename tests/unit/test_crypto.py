"""The AES-256-GCM STREAM container: round trips, tampering, truncation, keys, test vector."""

from __future__ import annotations

import base64
import io
import os
import re
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from include.backup.errors import BackupError, IntegrityError, KeyNotFoundError
from include.backup.pipeline.crypto import (
    MAGIC,
    TAG_SIZE,
    DecryptingReader,
    EncryptingWriter,
    decrypt_file,
    decrypt_stream,
    encrypt_stream,
    generate_key,
    read_header,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "container-format.md"
KEK = bytes.fromhex("11" * 32)
OTHER_KEK = bytes.fromhex("22" * 32)
KEY_ID = "k1"
CHUNK = 64


def keys(key_id: str) -> bytes:
    return {KEY_ID: KEK}[key_id]


def encrypt(data: bytes, chunk_size: int = CHUNK, key_id: str = KEY_ID, kek: bytes = KEK) -> bytes:
    out = io.BytesIO()
    result = encrypt_stream(io.BytesIO(data), out, kek, key_id, chunk_size)
    assert result.ciphertext_size == len(out.getvalue())
    assert result.plaintext_size == len(data)
    return out.getvalue()


def decrypt(blob: bytes, lookup=keys) -> bytes:
    out = io.BytesIO()
    n = decrypt_stream(io.BytesIO(blob), out, lookup)
    assert n == len(out.getvalue())
    return out.getvalue()


def header_len(key_id: str = KEY_ID, context: bytes = b"") -> int:
    # version 2: 81 + key id + 2-byte context length + context
    return 83 + len(key_id.encode()) + len(context)


def chunk_offset(i: int, chunk_size: int = CHUNK) -> int:
    return header_len() + i * (chunk_size + TAG_SIZE)


# -- round trips ------------------------------------------------------------------------------

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 7 * CHUNK + 13]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_small_chunks(size: int) -> None:
    data = os.urandom(size)
    blob = encrypt(data)
    n_chunks = max(1, -(-size // CHUNK))
    assert len(blob) == header_len() + size + TAG_SIZE * n_chunks
    assert decrypt(blob) == data


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 12345])
def test_round_trip_default_chunk_size(size: int) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    result = encrypt_stream(io.BytesIO(data), out, KEK, KEY_ID)
    assert result.chunk_size == 1 << 20
    assert decrypt(out.getvalue()) == data


def test_result_fields_and_wrapped_key_match_header() -> None:
    out = io.BytesIO()
    result = encrypt_stream(io.BytesIO(b"x" * 100), out, KEK, "key-2026", 32)
    header = read_header(io.BytesIO(out.getvalue()))
    assert result.key_id == header.key_id == "key-2026"
    assert result.chunk_size == header.chunk_size == 32
    assert base64.b64decode(result.wrapped_key) == header.wrap_nonce + header.wrapped_key
    assert len(base64.b64decode(result.wrapped_key)) == 60


def test_fresh_data_key_and_nonces_per_container() -> None:
    a, b = encrypt(b"same plaintext"), encrypt(b"same plaintext")
    assert a != b
    assert read_header(io.BytesIO(a)).wrapped_key != read_header(io.BytesIO(b)).wrapped_key


class Trickle(io.RawIOBase):
    """A source returning at most ``step`` bytes per read, like a pipe or socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_short_reads_from_source_are_handled() -> None:
    data = os.urandom(5 * CHUNK + 3)
    blob = encrypt(data)
    out = io.BytesIO()
    decrypt_stream(Trickle(blob, 7), out, keys)  # type: ignore[arg-type]
    assert out.getvalue() == data
    enc = io.BytesIO()
    encrypt_stream(Trickle(data, 5), enc, KEK, KEY_ID, CHUNK)  # type: ignore[arg-type]
    assert decrypt(enc.getvalue()) == data


def test_reader_is_a_readable_stream() -> None:
    data = os.urandom(10 * CHUNK + 5)
    reader = DecryptingReader(io.BytesIO(encrypt(data)), keys)
    assert reader.header.key_id == KEY_ID
    assert reader.read(0) == b""
    got = reader.read(3) + reader.read(100)
    buffered = io.BufferedReader(reader, buffer_size=17)
    got += buffered.read()
    assert got == data
    assert reader.finished and reader.plaintext_size == len(data)
    assert reader.read(10) == b""


def test_writer_accepts_many_small_and_large_writes() -> None:
    data = os.urandom(20 * CHUNK + 9)
    out = io.BytesIO()
    with EncryptingWriter(out, KEK, KEY_ID, CHUNK) as w:
        pos = 0
        for step in [1, CHUNK - 1, CHUNK, 3 * CHUNK + 2, 5, 0, 8 * CHUNK]:
            w.write(data[pos : pos + step])
            pos += step
        w.write(memoryview(data)[pos:])
    assert w.result is not None and w.result.plaintext_size == len(data)
    assert decrypt(out.getvalue()) == data


# -- tampering --------------------------------------------------------------------------------

DATA = bytes(range(256)) * 2 + b"tail!"  # 517 bytes: 8 full chunks of 64 + a 5-byte final chunk
N_CHUNKS = 9


def flip(blob: bytes, offset: int, bit: int = 0) -> bytes:
    b = bytearray(blob)
    b[offset] ^= 1 << bit
    return bytes(b)


H = header_len()
TAMPER_CASES = {
    # name: (offset, bit, expected error, message fragment)
    "magic": (3, 0, IntegrityError, "not an encrypted backup container"),
    "version": (8, 0, IntegrityError, "unsupported container version 3"),
    "context_len": (14 + 2 + 1, 0, IntegrityError, "cannot unwrap the data key"),
    "context_len_huge": (14 + 2, 7, IntegrityError, "context length"),
    "chunk_size": (12, 0, IntegrityError, "cannot unwrap the data key"),
    "chunk_size_high_bit": (9, 7, IntegrityError, "chunk size"),
    "key_id_len": (13, 1, IntegrityError, "the key id is empty"),
    "key_id": (15, 0, KeyNotFoundError, "'k0'"),
    "wrap_nonce": (14 + 2 + 2 + 5, 3, IntegrityError, "wrong key-encryption key for key id 'k1'"),
    "wrapped_key": (14 + 2 + 2 + 12 + 10, 5, IntegrityError, "wrong key-encryption key for key id 'k1'"),
    "wrapped_key_tag": (14 + 2 + 2 + 12 + 40, 0, IntegrityError, "cannot unwrap the data key"),
    "nonce_prefix": (H - 3, 2, IntegrityError, "failed authentication at chunk 0"),
    "first_chunk_body": (H + 1, 4, IntegrityError, "failed authentication at chunk 0"),
    "chunk_tag": (chunk_offset(2) - 1, 7, IntegrityError, "failed authentication at chunk 1"),
    "middle_chunk": (chunk_offset(4) + 30, 1, IntegrityError, f"at chunk 4 (byte offset {chunk_offset(4)})"),
    "last_chunk_body": (chunk_offset(8), 0, IntegrityError, "failed authentication at chunk 8"),
    "last_chunk_tag": (chunk_offset(8) + 5 + 15, 6, IntegrityError, "failed authentication at chunk 8"),
}


@pytest.fixture(scope="module")
def blob() -> bytes:
    b = encrypt(DATA)
    assert len(b) == H + len(DATA) + N_CHUNKS * TAG_SIZE
    return b


@pytest.mark.parametrize("case", sorted(TAMPER_CASES))
def test_flipped_bit_is_detected(case: str, blob: bytes, tmp_path: Path) -> None:
    offset, bit, error, fragment = TAMPER_CASES[case]
    bad = flip(blob, offset, bit)
    with pytest.raises(error) as exc:
        decrypt(bad)
    assert fragment in str(exc.value)
    assert_decrypt_file_fails(bad, tmp_path, error)


def assert_decrypt_file_fails(bad: bytes, tmp_path: Path, error: type[Exception]) -> None:
    src = tmp_path / "payload.enc"
    src.write_bytes(bad)
    dst = tmp_path / "out" / "payload"
    dst.parent.mkdir(exist_ok=True)
    with pytest.raises(error):
        decrypt_file(src, dst, keys)
    assert list(dst.parent.iterdir()) == [], "decrypt_file left output behind"


def test_every_single_bit_flip_fails(blob: bytes) -> None:
    # Exhaustive over bytes (one bit each, rotating), for a small container.
    small = encrypt(b"0123456789abcdef" * 2 + b"xyz", chunk_size=16)
    for offset in range(len(small)):
        bad = flip(small, offset, offset % 8)
        with pytest.raises(BackupError):
            decrypt(bad)


def test_key_id_tampered_to_a_known_id_fails_at_unwrap(blob: bytes) -> None:
    bad = flip(blob, 15, 0)  # "k1" -> "k0"
    ring = {KEY_ID: KEK, "k0": KEK}
    with pytest.raises(IntegrityError, match="cannot unwrap the data key"):
        decrypt(bad, ring.__getitem__)


def test_wrong_kek(blob: bytes, tmp_path: Path) -> None:
    with pytest.raises(IntegrityError) as exc:
        decrypt(blob, lambda _id: OTHER_KEK)
    assert str(exc.value).startswith("wrong key-encryption key for key id 'k1': cannot unwrap the data key")
    assert KEK.hex() not in str(exc.value) and OTHER_KEK.hex() not in str(exc.value)
    src = tmp_path / "p.enc"
    src.write_bytes(blob)
    with pytest.raises(IntegrityError):
        decrypt_file(src, tmp_path / "p", lambda _id: OTHER_KEK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.enc"]


def test_wrong_kek_detected_before_reading_body() -> None:
    src = io.BytesIO(encrypt(os.urandom(10 * CHUNK)))
    with pytest.raises(IntegrityError, match="wrong key-encryption key"):
        DecryptingReader(src, lambda _id: OTHER_KEK)
    assert src.tell() == H  # only the header was read


@pytest.mark.parametrize(
    "lookup",
    [
        pytest.param({}.__getitem__, id="dict-KeyError"),
        pytest.param(
            lambda kid: (_ for _ in ()).throw(KeyNotFoundError(f"no key {kid!r}")), id="KeyNotFoundError"
        ),
    ],
)
def test_unknown_key_id(blob: bytes, tmp_path: Path, lookup) -> None:
    with pytest.raises(KeyNotFoundError, match="'k1'"):
        decrypt(blob, lookup)
    src = tmp_path / "p.enc"
    src.write_bytes(blob)
    with pytest.raises(KeyNotFoundError):
        decrypt_file(src, tmp_path / "p", lookup)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.enc"]


def test_kek_of_wrong_length_is_rejected(blob: bytes) -> None:
    with pytest.raises(ValueError, match="must be 32 bytes"):
        decrypt(blob, lambda _id: b"short")
    with pytest.raises(ValueError, match="must be 32 bytes"):
        encrypt_stream(io.BytesIO(b""), io.BytesIO(), b"short", KEY_ID)


# -- truncation, reordering, extension --------------------------------------------------------

TRUNCATIONS = {
    # name: (length to keep, message fragment)
    "empty_object": (0, "truncated: the container header is incomplete (0 bytes)"),
    "inside_magic": (5, "truncated: the container header is incomplete"),
    "inside_header": (30, "truncated: the container header is incomplete"),
    "header_only": (H, "truncated: final chunk missing (the container ends after its header"),
    "inside_first_chunk": (H + 40, "failed authentication at chunk 0"),
    "shorter_than_a_tag": (H + 8, f"chunk 0 at byte offset {H} is only 8 bytes"),
    "at_chunk_boundary": (
        chunk_offset(3),
        "truncated: final chunk missing (chunk 2 is a valid non-final chunk",
    ),
    "before_last_chunk": (chunk_offset(8), "truncated: final chunk missing"),
    "mid_chunk": (chunk_offset(5) + 40, "failed authentication at chunk 5"),
    "inside_tag_of_last": (chunk_offset(8) + 3, "chunk 8 at byte offset"),
    "one_byte_short": (-1, "failed authentication at chunk 8"),
}


@pytest.mark.parametrize("case", sorted(TRUNCATIONS))
def test_truncation_is_detected(case: str, blob: bytes, tmp_path: Path) -> None:
    keep, fragment = TRUNCATIONS[case]
    bad = blob[:keep]
    with pytest.raises(IntegrityError) as exc:
        decrypt(bad)
    assert fragment in str(exc.value)
    assert_decrypt_file_fails(bad, tmp_path, IntegrityError)


def test_truncation_to_a_full_final_chunk_boundary() -> None:
    data = os.urandom(4 * CHUNK)  # final chunk is a full one
    blob = encrypt(data)
    with pytest.raises(IntegrityError, match="truncated: final chunk missing"):
        decrypt(blob[: chunk_offset(3)])
    assert decrypt(blob) == data


def test_chunk_reorder_is_detected(blob: bytes, tmp_path: Path) -> None:
    size = CHUNK + TAG_SIZE
    c1, c2 = blob[chunk_offset(1) : chunk_offset(2)], blob[chunk_offset(2) : chunk_offset(3)]
    assert len(c1) == len(c2) == size
    bad = blob[: chunk_offset(1)] + c2 + c1 + blob[chunk_offset(3) :]
    with pytest.raises(IntegrityError, match="failed authentication at chunk 1 "):
        decrypt(bad)
    assert_decrypt_file_fails(bad, tmp_path, IntegrityError)


def test_duplicated_and_dropped_chunks_are_detected(blob: bytes) -> None:
    c3 = blob[chunk_offset(3) : chunk_offset(4)]
    with pytest.raises(IntegrityError, match="chunk 4"):
        decrypt(blob[: chunk_offset(4)] + c3 + blob[chunk_offset(4) :])
    with pytest.raises(IntegrityError, match="chunk 3"):
        decrypt(blob[: chunk_offset(3)] + blob[chunk_offset(4) :])


def test_chunk_from_another_container_is_detected(blob: bytes) -> None:
    other = encrypt(DATA)
    bad = blob[: chunk_offset(2)] + other[chunk_offset(2) : chunk_offset(3)] + blob[chunk_offset(3) :]
    with pytest.raises(IntegrityError, match="failed authentication at chunk 2"):
        decrypt(bad)


@pytest.mark.parametrize("extra", [b"\x00", b"garbage appended" * 10])
def test_trailing_data_after_full_final_chunk(extra: bytes, tmp_path: Path) -> None:
    blob = encrypt(os.urandom(3 * CHUNK))
    with pytest.raises(IntegrityError) as exc:
        decrypt(blob + extra)
    assert "trailing data after final chunk" in str(exc.value)
    assert_decrypt_file_fails(blob + extra, tmp_path, IntegrityError)


@pytest.mark.parametrize("extra", [b"\x00", os.urandom(200)])
def test_data_appended_after_short_final_chunk(extra: bytes, blob: bytes, tmp_path: Path) -> None:
    # The final chunk is short, so appended bytes change what the last chunk looks like:
    # it no longer authenticates, and the message names it.
    with pytest.raises(IntegrityError) as exc:
        decrypt(blob + extra)
    assert "chunk 8" in str(exc.value) or "trailing data" in str(exc.value)
    assert_decrypt_file_fails(blob + extra, tmp_path, IntegrityError)


def test_appended_copy_of_a_whole_container_is_detected(blob: bytes) -> None:
    with pytest.raises(IntegrityError):
        decrypt(blob + blob)


def test_plaintext_is_only_released_after_its_chunk_authenticates(blob: bytes) -> None:
    bad = flip(blob, chunk_offset(3) + 5)
    reader = DecryptingReader(io.BytesIO(bad), keys)
    assert reader.read(3 * CHUNK) == DATA[:CHUNK]  # chunk 0 alone
    assert reader.read(CHUNK) + reader.read(CHUNK) == DATA[CHUNK : 3 * CHUNK]
    with pytest.raises(IntegrityError, match="chunk 3"):
        reader.read(CHUNK)


# -- failure safety of the writer -------------------------------------------------------------


def test_aborted_writer_output_does_not_decrypt() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), EncryptingWriter(out, KEK, KEY_ID, CHUNK) as w:
        w.write(os.urandom(5 * CHUNK + 3))
        raise RuntimeError("source disappeared")
    with pytest.raises(IntegrityError, match="final chunk missing"):
        decrypt(out.getvalue())


def test_garbage_collected_writer_does_not_finish_the_stream() -> None:
    out = io.BytesIO()
    w = EncryptingWriter(out, KEK, KEY_ID, CHUNK)
    w.write(os.urandom(3 * CHUNK))
    del w
    with pytest.raises(IntegrityError, match="final chunk missing"):
        decrypt(out.getvalue())


def test_write_after_close_is_refused() -> None:
    w = EncryptingWriter(io.BytesIO(), KEK, KEY_ID, CHUNK)
    w.close()
    with pytest.raises(ValueError):
        w.write(b"late")


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="key_id"):
        EncryptingWriter(io.BytesIO(), KEK, "", CHUNK)
    with pytest.raises(ValueError, match="255"):
        EncryptingWriter(io.BytesIO(), KEK, "x" * 256, CHUNK)
    with pytest.raises(ValueError, match="chunk_size"):
        EncryptingWriter(io.BytesIO(), KEK, KEY_ID, 0)


# -- decrypt_file -----------------------------------------------------------------------------


def test_decrypt_file_success_and_existing_destination_kept_on_failure(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 1)
    src = tmp_path / "payload.enc"
    src.write_bytes(encrypt(data))
    dst = tmp_path / "restore" / "payload"
    dst.parent.mkdir()
    assert decrypt_file(src, dst, keys) == len(data)
    assert dst.read_bytes() == data
    # A failed decrypt leaves the previous good file untouched and no temp files.
    src.write_bytes(flip(src.read_bytes(), chunk_offset(4)))
    with pytest.raises(IntegrityError):
        decrypt_file(src, dst, keys)
    assert dst.read_bytes() == data
    assert [p.name for p in dst.parent.iterdir()] == ["payload"]


def test_decrypt_file_missing_source_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        decrypt_file(tmp_path / "nope.enc", tmp_path / "out", keys)
    assert list(tmp_path.iterdir()) == []


# -- secrets stay secret ----------------------------------------------------------------------


def test_reprs_and_results_do_not_contain_keys(blob: bytes) -> None:
    out = io.BytesIO()
    w = EncryptingWriter(out, KEK, KEY_ID, CHUNK)
    w.write(b"hello")
    w.close()
    reader = DecryptingReader(io.BytesIO(out.getvalue()), keys)
    texts = [repr(w), repr(w.result), repr(reader), repr(reader.header), str(reader.header)]
    secrets = [KEK.hex(), base64.b64encode(KEK).decode(), repr(KEK)]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "wrap_nonce" not in repr(reader.header)


def test_generate_key() -> None:
    a, b = generate_key(), generate_key()
    assert len(a) == 32 and a != b


# -- the documented test vector ---------------------------------------------------------------


VECTOR_CONTEXT = b'{"backup_id":"b1","backup_type":"FULL","parent_id":null,"source":"s"}'


def doc_vector(marker: str = "test-vector-container") -> tuple[dict[str, str], bytes]:
    text = DOC.read_text()
    inputs = dict(re.findall(r"^\| (KEK|data key|wrap nonce|nonce prefix)\s*\| `([0-9a-f]+)`", text, re.M))
    match = re.search(rf"<!-- {marker} -->\s*```\s*([0-9a-f\s]+?)\s*```", text)
    assert match, f"{marker} hex not found in docs/container-format.md"
    return inputs, bytes.fromhex(re.sub(r"\s+", "", match.group(1)))


VECTOR_PLAINTEXT = b"Test vector: forty bytes of plaintext.\n!"


@pytest.mark.parametrize(
    ("marker", "version", "context"),
    [("test-vector-container", 2, VECTOR_CONTEXT), ("test-vector-container-v1", 1, b"")],
)
def test_doc_test_vector_matches_code(marker: str, version: int, context: bytes) -> None:
    inputs, container = doc_vector(marker)
    assert set(inputs) == {"KEK", "data key", "wrap nonce", "nonce prefix"}
    assert "`test-key`" in DOC.read_text() and "| chunk size     | 16" in DOC.read_text()
    assert context.decode() in DOC.read_text()
    assert len(VECTOR_PLAINTEXT) == 40
    kek = bytes.fromhex(inputs["KEK"])
    fixed = (
        bytes.fromhex(inputs["data key"]),
        bytes.fromhex(inputs["wrap nonce"]),
        bytes.fromhex(inputs["nonce prefix"]),
    )
    out = io.BytesIO()
    result = encrypt_stream(
        io.BytesIO(VECTOR_PLAINTEXT), out, kek, "test-key", 16,
        context=context, _fixed=fixed, _version=version,
    )
    assert out.getvalue() == container
    assert result.wrapped_key in DOC.read_text()
    assert decrypt(container, {"test-key": kek}.__getitem__) == VECTOR_PLAINTEXT
    # Old (version 1) and new containers are read, with or without an expected context.
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(container), out, {"test-key": kek}.__getitem__, context=VECTOR_CONTEXT)
    assert out.getvalue() == VECTOR_PLAINTEXT


def independent_decrypt(container: bytes, kek: bytes) -> bytes:
    """A decryptor written from docs/container-format.md alone, using only AES-GCM."""
    assert container[:8] == b"AFBK-ENC" and container[8] in (1, 2)
    (chunk_size,) = struct.unpack(">I", container[9:13])
    L = container[13]
    o = 14 + L
    if container[8] == 2:
        (X,) = struct.unpack(">H", container[o : o + 2])
        o += 2 + X
    wrap_nonce = container[o : o + 12]
    data_key = AESGCM(kek).decrypt(wrap_nonce, container[o + 12 : o + 60], container[:o])
    prefix = container[o + 60 : o + 67]
    header = container[: o + 67]
    body = container[o + 67 :]
    size = chunk_size + 16
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    out = []
    for i, piece in enumerate(pieces):
        last = 1 if i == len(pieces) - 1 else 0
        out.append(AESGCM(data_key).decrypt(prefix + struct.pack(">IB", i, last), piece, header))
    return b"".join(out)


def test_independent_decryptor_reads_vector_and_fresh_containers() -> None:
    for marker in ("test-vector-container", "test-vector-container-v1"):
        inputs, container = doc_vector(marker)
        assert independent_decrypt(container, bytes.fromhex(inputs["KEK"])) == VECTOR_PLAINTEXT
    for size in (1, 16, 47, 48):
        data = os.urandom(size)
        assert independent_decrypt(encrypt(data, chunk_size=16), KEK) == data


# -- binding to the backup (version 2 context) -------------------------------------------------


def sealed_with(context: bytes, data: bytes = b"payload " * 300) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, KEK, KEY_ID, CHUNK, context=context)
    return out.getvalue()


def test_payload_bound_to_another_backup_is_refused_before_any_data() -> None:
    blob = sealed_with(b'{"backup_id":"old"}')
    with pytest.raises(IntegrityError, match="payload belongs to another backup.*old.*new"):
        DecryptingReader(io.BytesIO(blob), keys, context=b'{"backup_id":"new"}')
    assert decrypt(blob) == b"payload " * 300  # without an expectation it still decrypts


def test_context_cannot_be_rewritten_without_the_key() -> None:
    # Same-length edit of the context (old -> new): the key wrap authenticates it.
    blob = sealed_with(b'{"backup_id":"old"}').replace(b'"old"', b'"new"')
    with pytest.raises(IntegrityError, match="cannot unwrap the data key"):
        DecryptingReader(io.BytesIO(blob), keys, context=b'{"backup_id":"new"}')


def test_version_1_payload_is_read_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(b"legacy"), out, KEK, KEY_ID, CHUNK, _version=1)
    assert out.getvalue()[8] == 1
    reader = DecryptingReader(io.BytesIO(out.getvalue()), keys, context=b"{}")
    assert reader.read() == b"legacy"
    assert "not bound to its backup" in caplog.text


def test_magic_constant_documented() -> None:
    assert MAGIC.hex() == "4146424b2d454e43"
    assert "41 46 42 4b 2d 45 4e 43" in DOC.read_text()
