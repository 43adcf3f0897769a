"""The Google Cloud Storage target, built on the Google provider's GCSHook.

- Credentials come from the Airflow connection ``conn_id`` (type ``google_cloud_platform``:
  a key file path, key JSON, or the worker's ambient credentials; ``is_anonymous`` for an
  emulator). The storage client comes from the hook, built at first use. An emulator is
  reached the way the Google client library always does: ``STORAGE_EMULATOR_HOST``.
- Uploads: a file of at most 8 MiB is one multipart request; a larger one is a resumable
  upload sent ``chunk_size`` bytes per request (memory: one chunk). Both carry a CRC32C
  that the client checks against the one the service computed. The object exists only
  once the last chunk lands: an interrupted upload is never listed.
- Reads: ranged downloads of ``read_chunk`` bytes, each conditional on the generation
  seen when the read started (an overwrite during a read is an error, never a mix).
- Requests are retried with the library's policy for at most ``retry_deadline`` seconds,
  after which an unreachable endpoint is reported.
- The bucket must exist: a missing one is an error that says so.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from include.backup.errors import TargetError
from include.backup.targets._remote import MiB, other_error, short, source_size
from include.backup.targets.base import ObjectInfo
from include.backup.targets.object_store import ObjectStoreTarget
from include.backup.targets.tiers import HOT_CLASS, TierState, check_class

DEFAULT_CHUNK_SIZE = 16 * MiB  # a multiple of 256 KiB, as resumable uploads require
DEFAULT_READ_CHUNK = 4 * MiB
DEFAULT_RETRY_DEADLINE = 60.0
TIMEOUT = (10, 120)  # connect, read (seconds) per request
CHECKSUM = "crc32c"


class GCSTarget(ObjectStoreTarget):
    """A :class:`~include.backup.targets.base.Target` in a GCS bucket, under ``prefix``."""

    connection_example = "google-cloud-platform://?key_path=%2Fsecrets%2Fsa.json&project=my-project"
    secret_fields = (
        "extra.keyfile_dict",
        "extra.keyfile_dict.private_key",
        "extra.keyfile_dict.private_key_id",
    )
    client_label = "GCS"

    def __init__(  # the store's own options are keyword-only
        self, name: str, conn_id: str, bucket: str, prefix: str = "", *, chunk_size: int = DEFAULT_CHUNK_SIZE,
        read_chunk: int = DEFAULT_READ_CHUNK, retry_deadline: float = DEFAULT_RETRY_DEADLINE,
        storage_class: str | None = None, thaw_tier: str | None = None
    ) -> None:
        if chunk_size % (256 * 1024):
            raise ValueError(f"target '{name}': chunk_size must be a multiple of 256 KiB")
        self.bucket_name = bucket
        # Payloads (put) go to storage_class; put_bytes (manifests, records) to STANDARD
        # when a class is set (the bucket's default class could be a colder one).
        self.storage_class = None if storage_class is None else check_class("gcs", storage_class, name)
        self.thaw_tier = thaw_tier  # GCS reads every class at once: nothing to thaw
        self.chunk_size = chunk_size
        self.read_chunk = read_chunk
        self.retry_deadline = retry_deadline
        super().__init__(name, conn_id, prefix)

    def _shown_at(self) -> str:
        return f"gs://{self.bucket_name}/{self.root}"

    # --- the client ------------------------------------------------------------------

    def _build_client(self) -> Any:
        from airflow.providers.google.cloud.hooks.gcs import (
            GCSHook,  # lazy: provider hook: loaded when the connection is used
        )

        return GCSHook(gcp_conn_id=self.conn_id).get_conn()

    def _setup_error(self, exc: Exception) -> TargetError:
        return self.translate(exc, "connect to bucket", self.bucket_name)

    def _bucket(self) -> Any:
        return self._client.get().bucket(self.bucket_name)

    def _retry(self) -> Any:
        from google.cloud.storage.retry import (
            DEFAULT_RETRY,  # lazy: Google SDK is heavy: loaded when GCS is used
        )

        return DEFAULT_RETRY.with_timeout(self.retry_deadline)

    def _location(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{self.root}{key}"

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        name = self._key(key)
        size = source_size(self.name, key, src)
        with self._errors("upload", key, src):
            blob = self._bucket().blob(name, chunk_size=self.chunk_size)
            if self.storage_class is not None:
                blob.storage_class = self.storage_class
            blob.upload_from_filename(str(src), checksum=CHECKSUM, retry=self._retry(), timeout=TIMEOUT)
        return ObjectInfo(key=key, size=size)

    def _upload_bytes(self, full: str, data: bytes) -> None:
        blob = self._bucket().blob(full)
        if self.storage_class is not None:
            blob.storage_class = HOT_CLASS["gcs"]
        blob.upload_from_string(
            data,
            content_type="application/octet-stream",
            checksum=CHECKSUM,
            retry=self._retry(),
            timeout=TIMEOUT,
        )

    # --- storage classes (targets/tiers.py) ------------------------------------------

    store_kind = "gcs"

    def tier_state(self, key: str) -> TierState | None:
        """From the object's metadata only: class, size, and the MD5 and CRC32C GCS keeps
        of the whole object. Every GCS class is readable at once."""
        full = self._key(key)
        with self._errors("look up", key):
            blob = self._bucket().get_blob(full, retry=self._retry(), timeout=TIMEOUT)
        if blob is None:
            return None
        sums = {"etag": str(blob.etag or "")}
        if blob.md5_hash:
            sums["md5"] = base64.b64decode(blob.md5_hash).hex()
        if blob.crc32c:
            sums["crc32c"] = str(blob.crc32c)
        klass = str(blob.storage_class or "STANDARD")
        size = int(blob.size or 0)
        return TierState(key=key, size=size, storage_class=klass, readable=True, checksums=sums)

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Rewrite the object onto itself in the new class (GCS cannot change a class in
        place); a store that answers with the old class is reported, not trusted."""
        full = self._key(key)
        with self._errors(f"rewrite to storage class {storage_class}", key):
            blob = self._bucket().get_blob(full, retry=self._retry(), timeout=TIMEOUT)
            if blob is None:
                raise self._not_found(key)
            blob.update_storage_class(storage_class, retry=self._retry(), timeout=TIMEOUT)
        if blob.storage_class != storage_class:
            raise TargetError(
                f"target '{self.name}': rewriting '{key}' ({self._location(key)}) to storage class "
                f"{storage_class} left it in {blob.storage_class}; the store does not apply "
                "storage classes on rewrite (an emulator?)"
            )

    def request_thaw(self, key: str, tier: str) -> bool:
        return False  # every GCS class is readable at once

    # --- reading ---------------------------------------------------------------------

    def _lookup(self, full: str) -> tuple[int, Any] | None:
        blob = self._bucket().get_blob(full, retry=self._retry(), timeout=TIMEOUT)
        return None if blob is None else (int(blob.size or 0), blob)

    def _read_range(self, key: str, full: str, start: int, end: int, version: Any) -> BinaryIO:
        blob = version
        generation = blob.generation

        def fetch(pos: int, n: int) -> bytes:
            from google.api_core.exceptions import (
                NotFound,  # lazy: Google SDK is heavy: loaded when GCS is used
            )

            with self._errors("read", key):
                try:
                    data = blob.download_as_bytes(
                        start=pos,
                        end=pos + n - 1,
                        if_generation_match=generation,
                        checksum=None,  # a range has no whole-object checksum to check
                        retry=self._retry(),
                        timeout=TIMEOUT,
                    )
                except NotFound:
                    raise self._changed(key) from None
            # The download updates the blob from the response headers (when the server
            # sends x-goog-generation): a second guard against reading another version.
            if blob.generation is not None and int(blob.generation) != int(generation):
                raise self._changed(key)
            return bytes(data)

        return self._chunked(key, f"gs://{self.bucket_name}", fetch, start, end, self.read_chunk)

    def _names(self, full_prefix: str) -> Iterator[tuple[str, int]]:
        blobs = self._client.get().list_blobs(
            self.bucket_name, prefix=full_prefix, retry=self._retry(), timeout=TIMEOUT
        )
        for blob in blobs:
            yield blob.name, int(blob.size or 0)

    # --- deleting --------------------------------------------------------------------

    def _remove(self, full: str) -> None:
        from google.api_core.exceptions import NotFound  # lazy: Google SDK is heavy: loaded when GCS is used

        try:
            self._bucket().delete_blob(full, retry=self._retry(), timeout=TIMEOUT)
        except NotFound:
            return

    # --- errors ----------------------------------------------------------------------

    def _changed(self, key: str) -> TargetError:
        return TargetError(
            f"target '{self.name}': cannot read '{key}' (gs://{self.bucket_name}): the object "
            "changed while it was being read; retry"
        )

    def _endpoint(self) -> str:
        client = self._client.peek()
        try:
            return str(client._connection.API_BASE_URL) if client is not None else "the GCS endpoint"
        except Exception:  # noqa: BLE001 - private attribute: only for the message
            return "the GCS endpoint"

    def translate(self, exc: BaseException, action: str, key: str) -> TargetError:
        import requests  # lazy: with the Google SDK: loaded when GCS is used
        from google.api_core import exceptions as gexc  # lazy: Google SDK is heavy: loaded when GCS is used
        from google.auth import exceptions as auth_exc  # lazy: Google SDK is heavy: loaded when GCS is used

        cause: BaseException = exc
        if isinstance(exc, gexc.RetryError) and exc.cause is not None:
            cause = exc.cause  # the last error before the retry deadline ran out
        head = f"target '{self.name}': cannot {action} '{key}' (gs://{self.bucket_name})"
        conn = self._conn_ref()
        if isinstance(cause, (requests.ConnectionError, ConnectionError)) and not isinstance(
            cause, requests.ReadTimeout
        ):
            msg = (
                f"target '{self.name}': cannot reach {self._endpoint()} to {action} '{key}' "
                f"({type(cause).__name__}, retried for up to {self.retry_deadline:g} s); check "
                "that the endpoint is reachable from this worker, then retry"
            )
        elif isinstance(cause, (requests.Timeout, TimeoutError)):
            msg = f"{head}: {self._endpoint()} timed out; retry, or check the endpoint's health"
        elif isinstance(cause, auth_exc.GoogleAuthError):
            msg = f"{head}: {_auth_message(cause, conn)}"
        elif isinstance(cause, (gexc.Unauthorized, gexc.Forbidden)):
            msg = (
                f"{head}: access denied (HTTP {cause.code}); check the credentials in {conn} and "
                f"their roles on bucket '{self.bucket_name}' (e.g. Storage Object Admin)"
            )
        elif isinstance(cause, gexc.NotFound):
            msg = (
                f"{head}: bucket '{self.bucket_name}' does not exist at {self._endpoint()}; create "
                "it, or fix bucket: in the target's config"
            )
        elif isinstance(cause, gexc.PreconditionFailed):
            msg = f"{head}: the object changed while it was being read; retry"
        elif isinstance(cause, gexc.GoogleAPICallError):
            msg = f"{head}: GCS error (HTTP {cause.code}): {short(Exception(cause.message))}"
        elif type(cause).__name__ == "DataCorruption":
            msg = f"{head}: the CRC32C of what GCS stored does not match the file sent; retry"
        else:
            msg = other_error(head, cause)
        return self._error(msg)


def _auth_message(exc: BaseException, conn: str) -> str:
    from google.auth import exceptions as auth_exc  # lazy: Google SDK is heavy: loaded when GCS is used

    if isinstance(exc, auth_exc.RefreshError):
        return (
            f"Google rejected the credentials (could not get an access token: "
            f"{_auth_reason(exc)}); fix the service account key in {conn}"
        )
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return (
            f"no usable Google credentials ({type(exc).__name__}); set key_path or "
            f"keyfile_dict in {conn}, or give the worker a service account"
        )
    return f"credentials problem ({type(exc).__name__}); check {conn}"


def _auth_reason(exc: BaseException) -> str:
    """The OAuth error code of a failed token refresh ('invalid_grant'...), nothing more:
    the rest of the response may quote the request."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], str):
        return args[0].split(":")[0].strip()[:60] or type(exc).__name__
    return type(exc).__name__
