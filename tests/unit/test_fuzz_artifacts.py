"""Fuzzing the two parsers an attacker with write access to a target can feed: the payload
container and the manifest. Random mutations of a real artifact must never crash the
reader (only the package's own errors, which name the problem) and never come back as good
data. Bounded: 300 examples each (FUZZ_EXAMPLES), no deadline per example; the same
examples every run so that CI is repeatable — FUZZ_RANDOM=1 explores new ones."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from include.backup.catalog.manifest import EncryptionInfo, Manifest, StoredObject
from include.backup.catalog.signing import authenticate, sign, signed_bytes
from include.backup.errors import BackupError
from include.backup.keys import KeyRing
from include.backup.pipeline.compression import compress_writer
from include.backup.pipeline.crypto import encrypt_stream
from include.backup.pipeline.stream import open_sealed

RING = KeyRing({"k1": b"\x01" * 32, "k2": b"\x02" * 32}, "k1")
PLAIN = b"".join(b"row %06d of the events table\n" % i for i in range(3000))
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",  # CI: the same examples every run
)


def real_manifest() -> Manifest:
    m = Manifest(
        backup_id="events_full-20261206T020000Z-0a1b2c",
        schedule="events_full",
        source="events",
        source_type="postgres",
        backup_type="INCREMENTAL",
        parent_id="events_full-20261205T020000Z-9f8e7d",
        started_at=datetime(2026, 12, 6, 2, 0, tzinfo=UTC),
        finished_at=datetime(2026, 12, 6, 2, 3, 7, 123456, tzinfo=UTC),
        payload_format="pg_dump-custom",
        position={"lsn": "0/3000060", "wal_first": "000000010000000000000003"},
        raw_size=len(PLAIN),
        stats={"rows": {"events": 3000}, "ratio": 0.3125},
    )
    return m


def real_container() -> tuple[Manifest, bytes]:
    manifest = real_manifest()
    compressed = io.BytesIO()
    with compress_writer(compressed, "zstd", 3) as z:
        z.write(PLAIN)
    out = io.BytesIO()
    key_id, kek = RING.active()
    enc = encrypt_stream(
        io.BytesIO(compressed.getvalue()), out, kek, key_id, 4096, context=manifest.payload_context()
    )
    manifest.encryption = EncryptionInfo(key_id=key_id, wrapped_key=enc.wrapped_key, chunk_size=4096)
    manifest.objects = [StoredObject(name="payload", size=len(out.getvalue()), sha256="00" * 32)]
    sign(manifest, key_id, kek)
    return manifest, out.getvalue()


MANIFEST, CONTAINER = real_container()
MANIFEST_JSON = MANIFEST.to_json()


def read_all(blob: bytes) -> bytes:
    reader = open_sealed(io.BytesIO(blob), RING, "zstd", context=MANIFEST.payload_context())
    return reader.read()


def test_a_mac_with_non_ascii_characters_is_refused_not_a_crash() -> None:
    # Found by the manifest fuzz below: hmac.compare_digest raises TypeError on such a str.
    forged = Manifest.from_json(MANIFEST_JSON)
    assert forged.auth is not None
    forged.auth.mac = "é" * 64
    with pytest.raises(BackupError, match="failed authentication"):
        authenticate(forged, RING, source="events", backup_id=MANIFEST.backup_id)


def test_the_real_artifacts_are_good() -> None:
    assert read_all(CONTAINER) == PLAIN
    authenticate(Manifest.from_json(MANIFEST_JSON), RING, source="events", backup_id=MANIFEST.backup_id)


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "duplicate", "delete"]))
    b = bytearray(data)
    pos = draw(st.integers(0, len(b) - 1))
    if kind == "flip":
        b[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del b[pos:]
    elif kind == "insert":
        b[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "overwrite":
        new = draw(st.binary(min_size=1, max_size=64))
        b[pos : pos + len(new)] = new
    elif kind == "duplicate":
        end = min(len(b), pos + draw(st.integers(1, 5000)))
        b[end:end] = b[pos:end]
    else:
        del b[pos : pos + draw(st.integers(1, 5000))]
    return bytes(b)


@st.composite
def mutated_containers(draw: st.DrawFn) -> bytes:
    blob = CONTAINER
    for _ in range(draw(st.integers(1, 3))):
        blob = mutate(blob, draw) or b"\x00"
    return blob


@FUZZ
@given(mutated_containers())
def test_mutated_container_never_crashes_and_never_reads_as_good(blob: bytes) -> None:
    if blob == CONTAINER:
        return
    with pytest.raises(BackupError):
        read_all(blob)


@st.composite
def mutated_manifests(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return mutate(MANIFEST_JSON, draw)
    # Structured: change one value the way a careful attacker would, keeping valid JSON.
    doc = json.loads(MANIFEST_JSON)
    field = draw(
        st.sampled_from(
            ["backup_id", "source", "backup_type", "parent_id", "started_at", "raw_size",
             "objects", "position", "format_version", "auth", "encryption", "stats", "verification"]
        )
    )
    value = draw(
        st.one_of(
            st.none(), st.integers(-2, 2**40), st.text(max_size=40), st.just([]),
            st.just({"lsn": "0/0"}), st.just({"algorithm": "HMAC-SHA256", "key_id": "k2", "mac": "00" * 32}),
            st.just([{"name": "../other/payload", "size": 1, "sha256": "00" * 32}]),
            st.just({"disk": {"ok": True, "verified_at": "2026-12-06T02:04:00Z"}}),
        )
    )
    doc[field] = value
    return json.dumps(doc).encode()


@FUZZ
@given(mutated_manifests())
def test_mutated_manifest_never_crashes_and_never_authenticates_as_other_content(data: bytes) -> None:
    try:
        manifest = Manifest.from_json(data)
    except (ValidationError, ValueError):
        return  # read_manifest turns this into an IntegrityError naming the manifest
    try:
        authenticate(manifest, RING, source="events", backup_id=MANIFEST.backup_id)
    except BackupError:
        return
    # Accepted: then it says exactly what was signed (only unsigned fields may differ).
    assert signed_bytes(manifest) == signed_bytes(MANIFEST)
