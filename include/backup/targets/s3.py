"""The S3 target (AWS S3 and S3-compatible stores), built on the Amazon provider's S3Hook.

- Credentials, region and endpoint come from the Airflow connection ``conn_id`` (type
  ``aws``: login = access key id, password = secret access key; extra ``region_name``,
  ``endpoint_url`` for an S3-compatible endpoint such as MinIO, Ceph or moto, and
  ``config_kwargs`` for botocore settings, which win over the defaults here).
- The boto3 client comes from the hook, built at first use, never at import or
  construction time.
- Uploads: a file of at most ``part_size`` bytes is one PutObject; larger files are a
  multipart upload whose parts are sent ``concurrency`` at a time, each read straight from
  the file (memory does not grow with the part size). Every request carries an
  x-amz-checksum-crc32 that S3 checks on arrival (ChecksumAlgorithm=CRC32), on top of
  the SHA-256 the manifest records. The object exists only once CompleteMultipartUpload
  succeeds: an interrupted upload is never listed, and a failed one is aborted. An upload
  killed so hard that the abort could not run (SIGKILL, the endpoint gone) stays open and
  billed: ``list_partial_uploads`` / ``remove_partial_upload`` let the orphan sweep abort
  it once old enough (a bucket lifecycle rule "AbortIncompleteMultipartUpload" does the
  same on AWS).
- Reads: one ranged GET per open(), pinned to the ETag seen by the size lookup, streamed.
- The bucket must exist: a missing bucket is an error that says so, never created here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any, BinaryIO

from include.backup import faults
from include.backup.errors import TargetError
from include.backup.progress import open_counted
from include.backup.targets._remote import (
    MiB,
    other_error,
    part_ranges,
    run_bounded,
    source_error,
    source_size,
)
from include.backup.targets.base import Capabilities, ObjectInfo, PartialUpload, check_prefix
from include.backup.targets.object_store import ObjectStoreTarget
from include.backup.targets.streams import FileSlice, IterReader, buffered
from include.backup.targets.tiers import FROZEN_CLASSES, THAW_KEEP_DAYS, TierState, check_class

log = logging.getLogger(__name__)

DEFAULT_PART_SIZE = 8 * MiB  # S3 allows 5 MiB .. 5 GiB per part, 10,000 parts
DEFAULT_CONCURRENCY = 10  # as s3transfer (boto3 upload_file); parts are read from the file, not held
MAX_PARTS = 10_000
READ_BLOCK = 1 * MiB
# S3 checks each request against this checksum on arrival (and stores it with the object).
# CRC32, boto3's own default: its job is to catch corruption in transit, which a CRC does
# at a fraction of SHA-256's CPU; the manifest's SHA-256 proves the stored bytes end to end.
CHECKSUM = "CRC32"
# Payloads stored frozen and archive moves carry a SHA-256 instead (see _payload_checksum).
FROZEN_CHECKSUM = "SHA256"
MAX_COPY = 5 << 30  # the largest object one CopyObject copies

_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}
_CHANGED_CODES = {"PreconditionFailed", "412"}


class S3Target(ObjectStoreTarget):
    """A :class:`~include.backup.targets.base.Target` in an S3 bucket, under ``prefix``."""

    connection_example = "aws://ACCESS_KEY_ID:SECRET@/?region_name=eu-west-1"
    secret_fields = (
        "password",
        "extra.aws_secret_access_key",
        "extra.aws_session_token",
        "extra.session_kwargs.aws_secret_access_key",
        "extra.session_kwargs.aws_session_token",
    )
    client_label = "S3"
    capabilities = Capabilities(free_space=False, atomic_replace=True, partial_uploads=True)
    setup_hint = "the connection's fields and extra (region_name, endpoint_url, config_kwargs)"

    def __init__(  # the store's own options are keyword-only
        self, name: str, conn_id: str, bucket: str, prefix: str = "", *,
        part_size: int = DEFAULT_PART_SIZE, concurrency: int = DEFAULT_CONCURRENCY,
        storage_class: str | None = None, thaw_tier: str = "Standard"
    ) -> None:
        if part_size < 5 * MiB:
            raise ValueError(f"target '{name}': part_size must be at least 5 MiB (S3's minimum)")
        self.bucket = bucket
        # Payloads (put) go to storage_class; put_bytes (manifests, records) stays STANDARD.
        self.storage_class = None if storage_class is None else check_class("s3", storage_class, name)
        self.thaw_tier = thaw_tier
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        super().__init__(name, conn_id, prefix)

    def _shown_at(self) -> str:
        return f"s3://{self.bucket}/{self.root}"

    # --- the client ------------------------------------------------------------------

    def _build_client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.s3 import (
            S3Hook,  # lazy: provider hook: loaded when the connection is used
        )
        from botocore.config import Config  # lazy: botocore is heavy: loaded when S3 is used

        hook = S3Hook(aws_conn_id=self.conn_id)
        defaults = Config(
            connect_timeout=10,
            read_timeout=120,
            retries={"mode": "standard", "max_attempts": 3},
            max_pool_connections=max(10, self.concurrency + 2),
        )
        # The connection's own config_kwargs win over these defaults.
        config = defaults.merge(hook.config)
        client = hook.get_client_type(config=config)
        self._secrets += [
            s for s in (hook.conn_config.aws_secret_access_key, hook.conn_config.aws_session_token) if s
        ]
        return client

    def _s3(self) -> Any:
        return self._client.get()

    def _endpoint(self) -> str:
        client = self._client.peek()
        return str(client.meta.endpoint_url) if client is not None else "(not connected)"

    def _location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.root}{key}"

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        full = self._key(key)
        size = source_size(self.name, key, src)
        client = self._s3()
        if size <= self.part_size:
            with self._errors("upload", key):
                try:
                    body = open_counted(src)  # counted by an upload's progress; closed below
                except OSError as exc:
                    raise source_error(self.name, key, src, exc) from exc
                with body:
                    client.put_object(
                        Bucket=self.bucket,
                        Key=full,
                        Body=body,
                        ContentLength=size,
                        ChecksumAlgorithm=self._payload_checksum(),
                        **self._class_args(),
                    )
            return ObjectInfo(key=key, size=size)
        self._multipart(key, full, src, size)
        return ObjectInfo(key=key, size=size)

    def _multipart(self, key: str, full: str, src: Path, size: int) -> None:
        client = self._s3()
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        with self._errors("start a multipart upload of", key):
            upload_id = client.create_multipart_upload(
                Bucket=self.bucket, Key=full, ChecksumAlgorithm=self._payload_checksum(), **self._class_args()
            )["UploadId"]

        def send(number: int, offset: int, length: int) -> dict[str, Any]:
            with FileSlice(src, offset, length) as body:
                resp = client.upload_part(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ContentLength=length,
                    ChecksumAlgorithm=self._payload_checksum(),
                )
            if number == 1:
                faults.hit("upload.mid-write")  # a test hook: a multipart upload begun
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            # S3 wants each part's checksum back when the upload was created with one.
            algo = self._payload_checksum()
            if resp.get(f"Checksum{algo}"):
                part[f"Checksum{algo}"] = resp[f"Checksum{algo}"]
            return part

        jobs = [
            (lambda n=n, off=off, ln=ln: send(n, off, ln))
            for n, (off, ln) in enumerate(part_ranges(size, part_size), start=1)
        ]
        try:
            with self._errors("upload", key, src=src):
                parts = run_bounded(jobs, self.concurrency)
                client.complete_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            # Whatever stopped us (an error, KeyboardInterrupt, a task timeout), drop the
            # parts: S3 would otherwise keep (and bill) them, invisible, forever.
            try:
                client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception as exc:  # noqa: BLE001 - best effort; the first error matters
                log.warning(
                    "target '%s': could not abort the multipart upload of '%s' (%s); a bucket "
                    "lifecycle rule AbortIncompleteMultipartUpload will remove its parts",
                    self.name,
                    key,
                    type(exc).__name__,
                )
            raise

    def _upload_bytes(self, full: str, data: bytes) -> None:
        # No StorageClass: STANDARD, readable at once (manifests, index, audit, run records).
        self._s3().put_object(Bucket=self.bucket, Key=full, Body=data, ChecksumAlgorithm=CHECKSUM)

    def _payload_checksum(self) -> str:
        """SHA-256 for payloads stored frozen: S3 then keeps the SHA-256 of a single-part
        object, which verify compares with the manifest's without reading (thawing) the
        data; CRC32 otherwise (cheaper, and the data can be read back)."""
        return FROZEN_CHECKSUM if self.storage_class in FROZEN_CLASSES["s3"] else CHECKSUM

    def _class_args(self) -> dict[str, str]:
        if self.storage_class in (None, "STANDARD"):
            return {}
        return {"StorageClass": str(self.storage_class)}

    # --- storage classes (targets/tiers.py) ------------------------------------------

    store_kind = "s3"

    def tier_state(self, key: str) -> TierState | None:
        """From HEAD only: the class (absent = STANDARD), the restore header
        (``ongoing-request="true"``: thawing; ``"false"``: a readable restored copy), the
        size and S3's own checksums."""
        from botocore.exceptions import ClientError  # lazy: botocore is heavy: loaded when S3 is used

        full = self._key(key)
        with self._errors("look up", key):
            try:
                head = self._s3().head_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            except ClientError as exc:
                if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        klass = str(head.get("StorageClass") or "STANDARD")
        restore = str(head.get("Restore") or "")
        frozen = klass in FROZEN_CLASSES["s3"] and 'ongoing-request="false"' not in restore
        sums = {"etag": str(head.get("ETag", "")).strip('"')}
        for name in ("SHA256", "CRC32", "CRC32C", "CRC64NVME", "SHA1"):
            if head.get(f"Checksum{name}"):
                sums[name.lower()] = str(head[f"Checksum{name}"])
        if head.get("ChecksumType"):
            sums["checksum_type"] = str(head["ChecksumType"])
        elif "-" in sums["etag"]:
            # A multipart object (ETag "<md5 of md5s>-<parts>"): uploaded here without a
            # full-object checksum type, its checksum is a composite of the parts'
            # (a server that leaves ChecksumType out, such as moto, still means that).
            sums["checksum_type"] = "COMPOSITE"
        return TierState(
            key=key,
            size=int(head["ContentLength"]),
            storage_class=klass,
            readable=not frozen,
            thawing=frozen and 'ongoing-request="true"' in restore,
            checksums=sums,
        )

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Copy the object onto itself with the new class, bytes and metadata unchanged,
        asking S3 for the SHA-256 of the copy (what verify of a frozen object compares
        with the manifest). One CopyObject up to 5 GiB, a managed multipart copy past it."""
        full = self._key(key)
        client = self._s3()
        source = {"Bucket": self.bucket, "Key": full}
        extra = {"StorageClass": storage_class, "ChecksumAlgorithm": FROZEN_CHECKSUM}
        with self._errors(f"move to storage class {storage_class}", key):
            size = int(client.head_object(Bucket=self.bucket, Key=full)["ContentLength"])
            if size <= MAX_COPY:
                client.copy_object(Bucket=self.bucket, Key=full, CopySource=source,
                                   MetadataDirective="COPY", **extra)  # fmt: skip
            else:
                client.copy(source, self.bucket, full, ExtraArgs=extra)

    def request_thaw(self, key: str, tier: str) -> bool:
        """restore_object for THAW_KEEP_DAYS days at ``tier``; False when S3 says a
        restore is already in progress (or the object is not in an archive class)."""
        from botocore.exceptions import ClientError  # lazy: botocore is heavy: loaded when S3 is used

        full = self._key(key)
        with self._errors(f"request a thaw ({tier}) of", key):
            try:
                self._s3().restore_object(
                    Bucket=self.bucket,
                    Key=full,
                    RestoreRequest={"Days": THAW_KEEP_DAYS, "GlacierJobParameters": {"Tier": tier}},
                )
            except ClientError as exc:
                if _code(exc) in ("RestoreAlreadyInProgress", "InvalidObjectState"):
                    return False
                raise
        return True

    # --- reading ---------------------------------------------------------------------

    def _lookup(self, full: str) -> tuple[int, Any] | None:
        from botocore.exceptions import ClientError  # lazy: botocore is heavy: loaded when S3 is used

        try:
            head = self._s3().head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"]), head["ETag"]

    def _read_range(self, key: str, full: str, start: int, end: int, version: Any) -> BinaryIO:
        with self._errors("read", key):
            resp = self._s3().get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={start}-{end - 1}", IfMatch=version
            )
        body = resp["Body"]

        def blocks() -> Iterator[bytes]:
            while True:
                with self._errors("read", key):
                    block = body.read(READ_BLOCK)
                if not block:
                    return
                yield block

        def short_read(got: int) -> TargetError:
            return TargetError(
                f"target '{self.name}': reading '{key}' from s3://{self.bucket}/{full} "
                f"ended after {got} of {end - start} bytes; retry"
            )

        return buffered(IterReader(blocks(), end - start, short_read, on_close=body.close))

    def _names(self, full_prefix: str) -> Iterator[tuple[str, int]]:
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"])

    # --- deleting --------------------------------------------------------------------

    def _remove(self, full: str) -> None:
        self._s3().delete_object(Bucket=self.bucket, Key=full)  # missing: no error

    # --- leftovers of killed puts ----------------------------------------------------

    def list_partial_uploads(self, prefix: str = "") -> list[PartialUpload]:
        """The multipart uploads under ``prefix`` never completed nor aborted (a killed
        task, an endpoint outage during the abort), with their start time."""
        check_prefix(self.name, prefix)
        found: list[PartialUpload] = []
        with self._errors("list the open multipart uploads under", prefix or "(everything)"):
            pages = self._s3().get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.root + prefix
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    key, started = up["Key"][len(self.root) :], up["Initiated"].astimezone(UTC)
                    found.append(PartialUpload(key, started, upload_id=up["UploadId"]))
        return sorted(found, key=lambda u: (u.key, u.upload_id or ""))

    def remove_partial_upload(self, upload: PartialUpload) -> None:
        from botocore.exceptions import ClientError  # lazy: botocore is heavy: loaded when S3 is used

        if not upload.upload_id:
            raise TargetError(
                f"target '{self.name}': no upload id for the partial upload of '{upload.key}'; "
                "pass one listed by list_partial_uploads()"
            )
        full = self._key(upload.key)
        with self._errors("abort the multipart upload of", upload.key):
            try:
                self._s3().abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload.upload_id)
            except ClientError as exc:
                if _code(exc) not in ("NoSuchUpload", "404"):
                    raise  # already completed or aborted: nothing left to remove

    # --- errors ----------------------------------------------------------------------

    def translate(self, exc: BaseException, action: str, key: str) -> TargetError:
        from botocore.exceptions import (  # lazy: botocore is heavy: loaded when S3 is used
            ClientError,
            ConnectionClosedError,
            EndpointConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import (  # lazy: botocore is heavy: loaded when S3 is used
            ConnectionError as BotoConnectionError,
        )

        head = f"target '{self.name}': cannot {action} '{key}' ({self._location(key)})"
        conn = self._conn_ref()
        if isinstance(exc, ReadTimeoutError):  # before HTTPClientError, its base class
            msg = (
                f"{head}: the S3 endpoint {self._endpoint()} timed out; retry, or check the endpoint's health"
            )
        elif isinstance(
            exc, (EndpointConnectionError, BotoConnectionError, ConnectionClosedError, HTTPClientError)
        ):
            msg = (
                f"target '{self.name}': cannot reach the S3 endpoint {self._endpoint()} to {action} "
                f"'{key}' ({type(exc).__name__}); check that the endpoint is up and reachable "
                f"from this worker ({conn}, extra endpoint_url), then retry"
            )
        elif isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            msg = (
                f"{head}: no usable AWS credentials ({type(exc).__name__}); set login (access key "
                f"id) and password (secret access key) in {conn}, or give the worker a role"
            )
        elif isinstance(exc, ClientError):
            code = _code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _AUTH_CODES:
                msg = (
                    f"{head}: S3 rejected the credentials ({code}); fix the access key id and "
                    f"secret access key in {conn}"
                )
            elif code in _DENIED_CODES:
                msg = (
                    f"{head}: access denied (HTTP 403); check the credentials in {conn} and that "
                    f"they may read, write, list and delete in bucket '{self.bucket}'"
                )
            elif code == "NoSuchBucket":
                msg = (
                    f"{head}: bucket '{self.bucket}' does not exist at {self._endpoint()}; create "
                    "it, or fix bucket: in the target's config"
                )
            elif code in _CHANGED_CODES:
                msg = f"{head}: the object changed while it was being read; retry"
            elif code in ("InvalidObjectState", "ObjectNotInActiveTierError"):
                msg = (
                    f"{head}: the object is frozen in an archive class (GLACIER or DEEP_ARCHIVE) "
                    "and cannot be read before a thaw; `restore` requests one and says how to go "
                    "on (docs/targets.md#archive-tiers)"
                )
            else:
                message = exc.response.get("Error", {}).get("Message", "")
                msg = f"{head}: S3 error {code} (HTTP {status}): {' '.join(str(message).split())[:300]}"
        else:
            msg = other_error(head, exc)
        return self._error(msg)


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
