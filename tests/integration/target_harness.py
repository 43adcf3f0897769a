"""The storage targets the integration tests run against, one harness per kind.

Adding a target kind = one entry in ``HARNESSES``: a factory that builds the target on a
fresh, empty root (bucket prefix, container, remote directory) and knows how to reach
behind the target's back to damage an object and to leave a half-done upload. Factories
get the pytest ``request`` so they can use the service fixtures of
tests/integration/services.py (``request.getfixturevalue("moto_server")``), which start the
real server and fail, never skip, when it is not installed.

The ``harness`` and ``target`` fixtures are parametrised over every kind; a test module
imports them (``from tests.integration.target_harness import harness, target``).
"""

from __future__ import annotations

import contextlib
import ftplib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.backup.targets.azure import AzureBlobTarget, block_id, new_nonce
from include.backup.targets.base import Target, temp_name
from include.backup.targets.ftp import FTPTarget
from include.backup.targets.gcs import GCSTarget
from include.backup.targets.local import LocalTarget
from include.backup.targets.s3 import S3Target
from include.backup.targets.sftp import SFTPTarget
from tests.integration.services import unique

MiB = 1 << 20


@dataclass
class Harness:
    target: Target
    # Flip one byte of the stored object ``key`` without going through the target.
    corrupt: Callable[[str], None]
    # Leave what a put of ``key`` killed halfway leaves behind (temp file, open multipart
    # upload...), holding ``data``.
    leave_partial_upload: Callable[[str, bytes], None]


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    root = tmp_path / "target-root"
    target = LocalTarget("local-test", root)

    def corrupt(key: str) -> None:
        path = root / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def leave_partial_upload(key: str, data: bytes) -> None:
        dest = root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        (dest.parent / temp_name(dest.name)).write_bytes(data)

    return Harness(target, corrupt, leave_partial_upload)


def _flip_middle_byte(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    return bytes(flipped)


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:

    s3 = request.getfixturevalue("moto_server")
    prefix = unique() + "/"
    # A small part size so that the 5 MiB cases go through the multipart path.
    target = S3Target("s3-test", s3.conn_id, s3.bucket, prefix, part_size=5 * MiB)
    client = s3.client()

    def corrupt(key: str) -> None:
        data = client.get_object(Bucket=s3.bucket, Key=prefix + key)["Body"].read()
        client.put_object(Bucket=s3.bucket, Key=prefix + key, Body=_flip_middle_byte(data))

    def leave_partial_upload(key: str, data: bytes) -> None:
        # A multipart upload with one part sent and never completed nor aborted.
        upload = client.create_multipart_upload(Bucket=s3.bucket, Key=prefix + key, ChecksumAlgorithm="CRC32")
        client.upload_part(Bucket=s3.bucket, Key=prefix + key, UploadId=upload["UploadId"], PartNumber=1,
                           Body=data, ChecksumAlgorithm="CRC32")

    return Harness(target, corrupt, leave_partial_upload)


def _azure_blob(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    az = request.getfixturevalue("azurite")
    prefix = unique() + "/"
    # Small blocks so that the 5 MiB cases are staged as several blocks.
    target = AzureBlobTarget("azure-test", az.conn_id, az.container, prefix, block_size=1 * MiB,
                             read_chunk=1 * MiB)
    container = az.container_client()

    def corrupt(key: str) -> None:
        blob = container.get_blob_client(prefix + key)
        blob.upload_blob(_flip_middle_byte(blob.download_blob().readall()), overwrite=True)

    def leave_partial_upload(key: str, data: bytes) -> None:
        # A block staged (as a killed put would) but never committed.
        container.get_blob_client(prefix + key).stage_block(block_id(new_nonce(), 0), data)

    return Harness(target, corrupt, leave_partial_upload)


def _gcs(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    gcs = request.getfixturevalue("gcs_emulator")
    prefix = unique() + "/"
    # Small chunks so that the 5 MiB cases go through several resumable-upload requests.
    target = GCSTarget("gcs-test", gcs.conn_id, gcs.bucket, prefix, chunk_size=1 * MiB, read_chunk=1 * MiB)
    bucket = gcs.client().bucket(gcs.bucket)

    def corrupt(key: str) -> None:
        blob = bucket.blob(prefix + key)
        blob.upload_from_string(_flip_middle_byte(blob.download_as_bytes()))

    def leave_partial_upload(key: str, data: bytes) -> None:
        # A resumable upload session with a first chunk sent and never finalised.
        import requests

        chunk = (data * (256 * 1024 // max(1, len(data)) + 1))[: 256 * 1024]
        total = 4 * len(chunk)
        url = bucket.blob(prefix + key).create_resumable_upload_session(size=total)
        content_range = f"bytes 0-{len(chunk) - 1}/{total}"
        resp = requests.put(url, data=chunk, headers={"Content-Range": content_range}, timeout=30)
        assert resp.status_code == 308, resp.text  # "resume incomplete": stored, not published

    return Harness(target, corrupt, leave_partial_upload)


def _sftp(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    ssh = request.getfixturevalue("sshd")
    root = f"{ssh.root}/{unique()}"
    target = SFTPTarget("sftp-test", ssh.conn_id, root)
    client = ssh.client()
    request.addfinalizer(client.close)
    request.addfinalizer(target.close)

    def corrupt(key: str) -> None:
        with client.open(f"{root}/{key}", "rb") as f:
            data = f.read()
        with client.open(f"{root}/{key}", "wb") as f:
            f.write(_flip_middle_byte(data))

    def leave_partial_upload(key: str, data: bytes) -> None:
        directory, _, name = f"{root}/{key}".rpartition("/")
        path = ""
        for part in directory.strip("/").split("/"):
            path += "/" + part
            try:
                client.stat(path)
            except FileNotFoundError:
                client.mkdir(path)
        with client.open(f"{directory}/{temp_name(name)}", "wb") as f:
            f.write(data)

    return Harness(target, corrupt, leave_partial_upload)


def _ftp(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:

    ftp_service = request.getfixturevalue("ftp_server")
    root = f"/{unique()}"
    target = FTPTarget("ftp-test", ftp_service.conn_id, root)
    client = ftp_service.client()
    request.addfinalizer(client.close)
    request.addfinalizer(target.close)

    def corrupt(key: str) -> None:
        buf = io.BytesIO()
        client.retrbinary(f"RETR {root}/{key}", buf.write)
        client.storbinary(f"STOR {root}/{key}", io.BytesIO(_flip_middle_byte(buf.getvalue())))

    def leave_partial_upload(key: str, data: bytes) -> None:
        directory, _, name = f"{root}/{key}".rpartition("/")
        path = ""
        for part in directory.strip("/").split("/"):
            path += "/" + part
            with contextlib.suppress(ftplib.error_perm):  # exists
                client.mkd(path)
        client.storbinary(f"STOR {directory}/{temp_name(name)}", io.BytesIO(data))

    return Harness(target, corrupt, leave_partial_upload)


HARNESSES: dict[str, Callable[[pytest.FixtureRequest, Path], Harness]] = {
    "local": _local,
    "s3": _s3,
    "azure_blob": _azure_blob,
    "gcs": _gcs,
    "sftp": _sftp,
    "ftp": _ftp,
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return HARNESSES[request.param](request, tmp_path)


@pytest.fixture
def target(harness: Harness) -> Target:
    return harness.target
