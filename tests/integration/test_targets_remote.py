"""Remote targets (s3, azure_blob, gcs, sftp, ftp) against their real servers: what the
generic conformance suite cannot do — an endpoint that goes away and comes back, wrong
credentials, large objects with bounded memory, store-specific integrity features.

The servers come from tests/integration/services.py; a :class:`TcpProxy` in front of a
server plays the endpoint that goes down.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from include.backup.errors import ObjectNotFound, TargetError
from include.backup.targets.base import ObjectInfo, Target
from tests.integration.services import TcpProxy, unique

pytestmark = pytest.mark.integration

MiB = 1 << 20
KINDS = ["s3", "azure_blob", "gcs", "sftp", "ftp"]


def _conn_env(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: str) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
    return conn_id


@dataclass
class Endpoint:
    """How to build a target of one kind against a given port of its server."""

    upstream_port: int
    make: Callable[[int], Target]  # port -> a target reaching the server through that port


def _endpoint(kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    conn_id = f"{kind}_via_port_{unique('c').replace('-', '_')}"
    if kind == "s3":
        from include.backup.targets.s3 import S3Target

        s3 = request.getfixturevalue("moto_server")

        def make(port: int) -> Target:
            _conn_env(monkeypatch, conn_id, s3.connection(url=f"http://127.0.0.1:{port}"))
            return S3Target("s3-remote", conn_id, s3.bucket, unique())

        return Endpoint(s3.port, make)
    if kind == "azure_blob":
        from include.backup.targets.azure import AzureBlobTarget

        az = request.getfixturevalue("azurite")

        def make(port: int) -> Target:
            # The SDK's default retries wait about a minute; the extra tunes them down.
            url = f"http://127.0.0.1:{port}/{az.account}"
            _conn_env(
                monkeypatch,
                conn_id,
                az.connection(
                    url=url, retry_total=1, initial_backoff=0, increment_base=1, random_jitter_range=0
                ),
            )
            return AzureBlobTarget("azure-remote", conn_id, az.container, unique())

        return Endpoint(az.port, make)
    if kind == "gcs":
        from include.backup.targets.gcs import GCSTarget

        gcs = request.getfixturevalue("gcs_emulator")

        def make(port: int) -> Target:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
            _conn_env(monkeypatch, conn_id, gcs.connection())
            return GCSTarget("gcs-remote", conn_id, gcs.bucket, unique(), retry_deadline=3)

        return Endpoint(gcs.port, make)
    if kind == "sftp":
        from include.backup.targets.sftp import SFTPTarget

        ssh = request.getfixturevalue("sshd")

        def make(port: int) -> Target:
            _conn_env(monkeypatch, conn_id, ssh.connection(port=port))
            target = SFTPTarget("sftp-remote", conn_id, f"{ssh.root}/{unique()}")
            request.addfinalizer(target.close)
            return target

        return Endpoint(ssh.port, make)
    if kind == "ftp":
        from include.backup.targets.ftp import FTPTarget

        ftp = request.getfixturevalue("ftp_server")

        def make(port: int) -> Target:
            _conn_env(monkeypatch, conn_id, ftp.connection(port=port))
            target = FTPTarget("ftp-remote", conn_id, f"/{unique()}")
            request.addfinalizer(target.close)
            return target

        return Endpoint(ftp.port, make)
    raise AssertionError(kind)


def _default_target(kind: str, request: pytest.FixtureRequest) -> Target:
    """A target of ``kind`` with production defaults (part sizes, concurrency), on a fresh root."""
    if kind == "s3":
        from include.backup.targets.s3 import S3Target

        s3 = request.getfixturevalue("moto_server")
        return S3Target("s3-remote", s3.conn_id, s3.bucket, unique())
    if kind == "azure_blob":
        from include.backup.targets.azure import AzureBlobTarget

        az = request.getfixturevalue("azurite")
        return AzureBlobTarget("azure-remote", az.conn_id, az.container, unique())
    if kind == "gcs":
        from include.backup.targets.gcs import GCSTarget

        gcs = request.getfixturevalue("gcs_emulator")
        return GCSTarget("gcs-remote", gcs.conn_id, gcs.bucket, unique())
    if kind == "sftp":
        from include.backup.targets.sftp import SFTPTarget

        ssh = request.getfixturevalue("sshd")
        target = SFTPTarget("sftp-remote", ssh.conn_id, f"{ssh.root}/{unique()}")
        request.addfinalizer(target.close)
        return target
    if kind == "ftp":
        from include.backup.targets.ftp import FTPTarget

        ftp = request.getfixturevalue("ftp_server")
        target = FTPTarget("ftp-remote", ftp.conn_id, f"/{unique()}")
        request.addfinalizer(target.close)
        return target
    raise AssertionError(kind)


def _full_text(exc: BaseException) -> str:
    """The message and the whole chain of causes, as a log would show them."""
    return "".join(traceback.format_exception(exc))


# --- built lazily, from the config --------------------------------------------------------


def test_targets_are_built_from_config_without_touching_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.backup.config.schema import BackupConfig
    from include.backup.targets import build_target

    config = BackupConfig.model_validate(
        {
            "targets": {
                "s3": {"type": "s3", "conn_id": "nope_s3", "bucket": "b-b-b", "prefix": "event-manager/"},
                "azure": {"type": "azure_blob", "conn_id": "nope_wasb", "container": "backups"},
                "gcs": {"type": "gcs", "conn_id": "nope_gcs", "bucket": "event-manager-backups"},
                "sftp": {"type": "sftp", "conn_id": "nope_sftp", "path": "/backups"},
                "ftp": {"type": "ftp", "conn_id": "nope_ftp", "path": "/backups"},
            }
        }
    )
    for name, cfg in config.targets.items():
        target = build_target(name, cfg)  # no connection exists: building must not look
        assert isinstance(target, Target) and target.name == name
        # First use looks the connection up, and says how to define it.
        with pytest.raises(TargetError) as exc:
            target.stat("k")
        message = str(exc.value)
        assert f"target '{name}'" in message
        assert f"Airflow connection '{cfg.conn_id}'" in message  # type: ignore[union-attr]
        assert f"AIRFLOW_CONN_{cfg.conn_id.upper()}" in message  # type: ignore[union-attr]


# --- endpoint down, then back ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_endpoint_down_then_back(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = _endpoint(kind, request, monkeypatch)
    proxy = TcpProxy(endpoint.upstream_port)  # its port is closed until up()
    request.addfinalizer(proxy.down)
    target = endpoint.make(proxy.port)

    # Nothing listening yet: a clear error naming the target and the key.
    with pytest.raises(TargetError) as exc:
        target.put_bytes("src/b1/payload", b"one")
    message = str(exc.value)
    assert f"target '{target.name}'" in message and "'src/b1/payload'" in message
    assert "cannot reach" in message and "retry" in message
    assert not isinstance(exc.value, ObjectNotFound)

    # The same call works once the endpoint answers.
    proxy.up()
    assert target.put_bytes("src/b1/payload", b"one") == ObjectInfo("src/b1/payload", 3)

    # It goes away under an open session / keep-alive connection...
    proxy.down()
    with pytest.raises(TargetError) as exc:
        target.stat("src/b1/payload")
    assert f"target '{target.name}'" in str(exc.value) and "cannot reach" in str(exc.value)
    with pytest.raises(TargetError):
        target.put_bytes("src/b2/payload", b"two")

    # ...and comes back: the same target object reconnects by itself.
    proxy.up()
    assert target.stat("src/b1/payload") == ObjectInfo("src/b1/payload", 3)
    target.put_bytes("src/b2/payload", b"two")
    assert target.read_bytes("src/b2/payload") == b"two"
    assert sorted(o.key for o in target.list()) == ["src/b1/payload", "src/b2/payload"]


# --- wrong credentials ----------------------------------------------------------------------


class _TokenEndpoint(http.server.BaseHTTPRequestHandler):
    """Answers every OAuth token request the way Google does for a revoked key."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def token_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _service_account(token_uri: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": os.urandom(20).hex(),
        "private_key": pem,
        "client_email": "backup@test-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }


def _wrong_credentials(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, token_uri: str
) -> tuple[Target, list[str], str]:
    """A target with wrong credentials, the secrets it was given, and what the message must say."""
    conn_id = f"{kind}_wrong_{unique('c').replace('-', '_')}"
    wrong = "wrong-" + os.urandom(12).hex()
    if kind == "s3":
        from include.backup.targets.s3 import S3Target

        s3 = request.getfixturevalue("moto_server")
        _conn_env(monkeypatch, conn_id, s3.connection(secret=wrong))
        # A HEAD has no body to say why: S3 answers a bare 403 to stat().
        return (
            S3Target("s3-remote", conn_id, s3.bucket),
            [wrong, s3.secret_key],
            "rejected the credentials|access denied",
        )
    if kind == "azure_blob":
        import base64

        from include.backup.targets.azure import AzureBlobTarget

        az = request.getfixturevalue("azurite")
        key = base64.b64encode(os.urandom(64)).decode()
        _conn_env(monkeypatch, conn_id, az.connection(key=key, retry_total=0))
        return (
            AzureBlobTarget("azure-remote", conn_id, az.container),
            [key, az.key],
            "rejected the credentials",
        )
    if kind == "gcs":
        from include.backup.targets.gcs import GCSTarget

        gcs = request.getfixturevalue("gcs_emulator")
        sa = _service_account(token_uri)
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps(
                {
                    "conn_type": "google_cloud_platform",
                    "extra": {"keyfile_dict": json.dumps(sa), "project": "test-project"},
                }
            ),
        )
        key_lines = [line for line in sa["private_key"].splitlines() if len(line) > 40]
        return (
            GCSTarget("gcs-remote", conn_id, gcs.bucket, retry_deadline=3),
            [sa["private_key_id"], *key_lines],
            "rejected the credentials",
        )
    if kind == "sftp":
        import io

        import paramiko

        from include.backup.targets.sftp import SFTPTarget

        ssh = request.getfixturevalue("sshd")
        other = paramiko.RSAKey.generate(2048)
        buf = io.StringIO()
        other.write_private_key(buf)
        pem = buf.getvalue()
        extra = {"private_key": pem, "host_key": ssh.host_key, "look_for_keys": "false"}
        _conn_env(monkeypatch, conn_id, ssh.connection(password=wrong, extra=extra))
        key_lines = [line for line in pem.splitlines() if len(line) > 40]
        target = SFTPTarget("sftp-remote", conn_id, str(ssh.root))
        request.addfinalizer(target.close)
        return target, [wrong, *key_lines], "refused the login"
    if kind == "ftp":
        from include.backup.targets.ftp import FTPTarget

        ftp = request.getfixturevalue("ftp_server")
        _conn_env(monkeypatch, conn_id, ftp.connection(password=wrong))
        return FTPTarget("ftp-remote", conn_id, "/"), [wrong, ftp.password], "refused the login"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_credentials(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, token_endpoint: str
) -> None:
    target, secrets, says = _wrong_credentials(kind, request, monkeypatch, token_endpoint)
    for call in (
        lambda: target.put_bytes("src/b1/payload", b"x"),
        lambda: target.stat("src/b1/payload"),
        lambda: list(target.list()),
    ):
        with pytest.raises(TargetError) as exc:
            call()
        message = str(exc.value)
        assert f"target '{target.name}'" in message
        assert any(phrase in message for phrase in says.split("|")), message
        assert f"connection '{target.conn_id}'" in message  # type: ignore[attr-defined]
        assert not isinstance(exc.value, ObjectNotFound)
        full = _full_text(exc.value)
        for secret in secrets:
            assert secret not in full, f"a secret leaked into the error of {kind}"


def test_sftp_host_key_mismatch(
    sshd: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import paramiko

    from include.backup.targets.sftp import SFTPTarget

    other = paramiko.RSAKey.generate(2048)
    extra = {
        "private_key": sshd.private_key,
        "host_key": f"ssh-rsa {other.get_base64()}",
        "look_for_keys": "false",
    }
    conn_id = _conn_env(monkeypatch, "sftp_other_host", sshd.connection(extra=extra))
    target = SFTPTarget("sftp-remote", conn_id, str(sshd.root))
    request.addfinalizer(target.close)
    with pytest.raises(TargetError) as exc:
        target.stat("k")
    assert "host key does not match" in str(exc.value) and "'sftp-remote'" in str(exc.value)


# --- large objects, bounded memory ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_large_object_round_trip_with_bounded_memory(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    size = 40 * MiB + 12345
    src = tmp_path / "big"
    digest = hashlib.sha256()
    with open(src, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(4 * MiB, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    target = _default_target(kind, request)
    assert target.stat("warm-up") is None  # client built, imports done, before measuring

    tracemalloc.start()
    try:
        assert target.put("src/b1/payload", src) == ObjectInfo("src/b1/payload", size)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        n = 0
        with target.open("src/b1/payload") as f:
            while block := f.read(MiB):
                got.update(block)
                n += len(block)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size and got.hexdigest() == digest.hexdigest()
    assert put_peak < 64 * MiB, f"put of {size} bytes peaked at {put_peak / MiB:.1f} MiB"
    assert read_peak < 64 * MiB, f"read of {size} bytes peaked at {read_peak / MiB:.1f} MiB"
    assert [o.key for o in target.list()] == ["src/b1/payload"]


# --- store-specific -----------------------------------------------------------------------------


def test_s3_failed_multipart_upload_is_aborted(
    moto_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.backup.targets import s3
    from include.backup.targets import streams as _remote

    prefix = unique()
    target = s3.S3Target(
        "s3-remote", moto_server.conn_id, moto_server.bucket, prefix, part_size=5 * MiB, concurrency=2
    )
    src = tmp_path / "big"
    src.write_bytes(os.urandom(23 * MiB))
    target.put_bytes("src/b1/payload", b"old")

    class FailingSlice(_remote.FileSlice):
        def __init__(self, path: Path, offset: int, length: int) -> None:
            if offset >= 10 * MiB:
                raise OSError("simulated: the disk went away")
            super().__init__(path, offset, length)

    monkeypatch.setattr(s3, "FileSlice", FailingSlice)
    with pytest.raises(TargetError) as exc:
        target.put("src/b1/payload", src)
    assert "'s3-remote'" in str(exc.value) and "src/b1/payload" in str(exc.value)
    client = moto_server.client()
    uploads = client.list_multipart_uploads(Bucket=moto_server.bucket, Prefix=prefix).get("Uploads", [])
    assert uploads == []  # aborted: no invisible parts left behind
    assert target.read_bytes("src/b1/payload") == b"old"  # the old object is untouched


def test_s3_objects_carry_crc32_checksums(moto_server: Any, tmp_path: Path) -> None:
    from include.backup.targets.s3 import S3Target

    prefix = unique()
    target = S3Target("s3-remote", moto_server.conn_id, moto_server.bucket, prefix, part_size=5 * MiB)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(12 * MiB))
    target.put("multi", src)
    target.put_bytes("single", b"small")
    client = moto_server.client()
    for key in ("multi", "single"):
        head = client.head_object(Bucket=moto_server.bucket, Key=f"{prefix}/{key}", ChecksumMode="ENABLED")
        assert head.get("ChecksumCRC32"), key
    # A multipart object's ETag ends with its part count: 5 + 5 + 2 MiB.
    head = client.head_object(Bucket=moto_server.bucket, Key=f"{prefix}/multi")
    assert head["ETag"].strip('"').endswith("-3")


def test_gcs_objects_carry_crc32c(gcs_emulator: Any) -> None:
    import base64

    import google_crc32c

    from include.backup.targets.gcs import GCSTarget

    prefix = unique()
    target = GCSTarget("gcs-remote", gcs_emulator.conn_id, gcs_emulator.bucket, prefix)
    data = os.urandom(1000)
    target.put_bytes("k", data)
    blob = gcs_emulator.client().bucket(gcs_emulator.bucket).get_blob(f"{prefix}/k")
    assert base64.b64decode(blob.crc32c) == google_crc32c.Checksum(data).digest()


# Azure only: the GCS target sends ifGenerationMatch with every ranged read, but the GCS
# emulator ignores that precondition (real GCS answers 412); S3 reads are one GET, which
# S3 serves from one version whatever happens meanwhile.
@pytest.mark.parametrize("kind", ["azure_blob"])
def test_overwrite_during_a_read_is_an_error_not_a_mix(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "azure_blob":
        from include.backup.targets.azure import AzureBlobTarget

        az = request.getfixturevalue("azurite")
        target: Any = AzureBlobTarget("azure-remote", az.conn_id, az.container, unique(), read_chunk=MiB)
    else:
        from include.backup.targets.gcs import GCSTarget

        gcs = request.getfixturevalue("gcs_emulator")
        target = GCSTarget("gcs-remote", gcs.conn_id, gcs.bucket, unique(), read_chunk=MiB)
    target.put_bytes("k", os.urandom(3 * MiB))
    with target.open("k") as f:
        f.read(MiB)
        target.put_bytes("k", os.urandom(3 * MiB))
        with pytest.raises(TargetError, match="changed while it was being read"):
            f.read()


@pytest.mark.parametrize("kind", ["s3", "azure_blob", "gcs"])
def test_missing_bucket_or_container(kind: str, request: pytest.FixtureRequest) -> None:
    missing = "no-such-" + unique("b")
    if kind == "s3":
        from include.backup.targets.s3 import S3Target

        target: Any = S3Target("s3-remote", request.getfixturevalue("moto_server").conn_id, missing)
    elif kind == "azure_blob":
        from include.backup.targets.azure import AzureBlobTarget

        target = AzureBlobTarget("azure-remote", request.getfixturevalue("azurite").conn_id, missing)
    else:
        from include.backup.targets.gcs import GCSTarget

        target = GCSTarget("gcs-remote", request.getfixturevalue("gcs_emulator").conn_id, missing)
    with pytest.raises(TargetError) as exc:
        target.put_bytes("k", b"x")
    message = str(exc.value)
    assert missing in message and "does not exist" in message and "create it" in message


def test_sftp_reports_free_space(sshd: Any, request: pytest.FixtureRequest) -> None:
    import shutil

    from include.backup.targets.sftp import SFTPTarget

    target = SFTPTarget("sftp-remote", sshd.conn_id, f"{sshd.root}/not/yet/made")
    request.addfinalizer(target.close)
    free = target.free_bytes()
    assert free is not None and free > 0
    # Same file system as this machine's: the figure is the server's statvfs.
    assert abs(free - shutil.disk_usage(sshd.root).free) < 512 * MiB


@pytest.mark.parametrize("kind", ["sftp", "ftp"])
def test_temp_like_keys_are_refused(kind: str, request: pytest.FixtureRequest) -> None:
    from include.backup.targets.base import temp_name

    target = _default_target(kind, request)
    with pytest.raises(TargetError, match="temporary"):
        target.put_bytes(f"src/{temp_name('payload')}", b"x")
