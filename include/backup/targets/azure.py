"""The Azure Blob Storage target, built on the Microsoft Azure provider's WasbHook.

- Credentials come from the Airflow connection ``conn_id`` (type ``wasb``): any form the
  hook accepts (account name + key with the account URL in host, a connection string, a
  SAS token, a service principal, managed identity). Remaining extras are handed to the
  SDK client by the hook, so e.g. ``{"retry_total": 3, "initial_backoff": 2}`` tunes the
  SDK's retries (its default waits about a minute before reporting an unreachable account).
- The BlobServiceClient comes from the hook, built at first use.
- Uploads: block blobs. A file of at most ``block_size`` bytes is one Put Blob; a larger
  one is staged as blocks, ``concurrency`` at a time (memory: that many blocks), each with
  its Content-MD5 checked by the service (validate_content), then published by one Put
  Block List. Staged blocks are invisible until that commit: an interrupted upload is
  never listed, and the service discards the uncommitted blocks after a week.
- Reads: ranged GETs of ``read_chunk`` bytes, each conditional on the ETag seen when the
  read started (an overwrite during a read is an error, never a mix of two versions).
- The container must exist: a missing one is an error that says so.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from include.backup.errors import ObjectNotFound, TargetError
from include.backup.targets import check_key, check_prefix
from include.backup.targets._remote import (
    ChunkReader,
    Lazy,
    MiB,
    buffered,
    clamp_range,
    connection_secrets,
    empty_stream,
    load_connection,
    part_ranges,
    read_slice,
    redact,
    root_prefix,
    run_bounded,
    short,
    sorted_infos,
    source_error,
    source_size,
    translating,
)
from include.backup.targets.base import ObjectInfo

DEFAULT_BLOCK_SIZE = 4 * MiB
DEFAULT_CONCURRENCY = 4
DEFAULT_READ_CHUNK = 4 * MiB
MAX_BLOCKS = 50_000
MAX_BLOCK_SIZE = 4000 * MiB

_AUTH_CODES = {
    "AuthenticationFailed",
    "AuthorizationFailure",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "InsufficientAccountPermissions",
}


def block_id(nonce: str, index: int) -> str:
    """The id of block ``index`` of the upload ``nonce``: every id of one blob has the
    same length, as the service requires (even across interrupted uploads)."""
    return base64.b64encode(f"{nonce}-{index:06d}".encode()).decode()


def new_nonce() -> str:
    return secrets.token_hex(6)


class AzureBlobTarget:
    """A :class:`~include.backup.targets.base.Target` in an Azure Blob container, under ``prefix``."""

    def __init__(
        self,
        name: str,
        conn_id: str,
        container: str,
        prefix: str = "",
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        read_chunk: int = DEFAULT_READ_CHUNK,
    ) -> None:
        self.name = name
        self.conn_id = conn_id
        self.container = container
        self.root = root_prefix(name, prefix)
        self.block_size = block_size
        self.concurrency = max(1, concurrency)
        self.read_chunk = read_chunk
        self._secrets: list[str] = []
        self._client = Lazy(self._make_client)

    def __repr__(self) -> str:
        return f"AzureBlobTarget({self.name!r}, container {self.container!r}, prefix {self.root!r})"

    # --- the client ------------------------------------------------------------------

    def _make_client(self) -> Any:
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        conn = load_connection(
            self.name,
            self.conn_id,
            "wasb://ACCOUNT_NAME:ACCOUNT_KEY@ACCOUNT_NAME.blob.core.windows.net",
        )
        self._secrets = connection_secrets(conn)
        try:
            service = WasbHook(wasb_conn_id=self.conn_id).get_conn()
            return service.get_container_client(self.container)
        except TargetError:
            raise
        except Exception as exc:  # noqa: BLE001 - anything the hook raises while building
            raise TargetError(
                redact(
                    f"target '{self.name}': cannot set up the Azure Blob client from Airflow "
                    f"connection '{self.conn_id}' ({type(exc).__name__}: {short(exc)}); check "
                    "the connection's account URL (host), login, key and extra",
                    self._secrets,
                )
            ) from None

    def _container(self) -> Any:
        return self._client.get()

    def _blob(self, key: str) -> Any:
        check_key(self.name, key)
        return self._container().get_blob_client(self.root + key)

    def _url(self) -> str:
        client = self._client.peek()
        return str(client.url) if client is not None else f"container '{self.container}'"

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        blob = self._blob(key)
        size = source_size(self.name, key, src)
        if size <= self.block_size:
            try:
                data = src.read_bytes()
            except OSError as exc:
                raise source_error(self.name, key, src, exc) from exc
            return self.put_bytes(key, data)
        block = min(MAX_BLOCK_SIZE, max(self.block_size, -(-size // MAX_BLOCKS)))
        nonce = new_nonce()

        def stage(index: int, offset: int, length: int) -> str:
            ident = block_id(nonce, index)
            data = read_slice(src, offset, length)
            blob.stage_block(ident, data, length=length, validate_content=True)
            return ident

        jobs = [
            (lambda i=i, off=off, ln=ln: stage(i, off, ln))
            for i, (off, ln) in enumerate(part_ranges(size, block))
        ]
        from azure.storage.blob import BlobBlock

        with self._errors("upload", key, src):
            ids = run_bounded(jobs, self.concurrency)
            # The blob appears (or its new version replaces the old) only here.
            blob.commit_block_list([BlobBlock(block_id=i) for i in ids])
        return ObjectInfo(key=key, size=size)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        blob = self._blob(key)
        with self._errors("upload", key):
            blob.upload_blob(data, length=len(data), overwrite=True, validate_content=True)
        return ObjectInfo(key=key, size=len(data))

    # --- reading ---------------------------------------------------------------------

    def _properties(self, key: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob(key)
        with self._errors("look up", key):
            try:
                return blob.get_blob_properties()
            except ResourceNotFoundError as exc:
                if _code(exc) == "ContainerNotFound":
                    raise
                return None

    def stat(self, key: str) -> ObjectInfo | None:
        props = self._properties(key)
        return None if props is None else ObjectInfo(key=key, size=int(props.size))

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        from azure.core import MatchConditions

        if offset < 0 or (length is not None and length < 0):
            clamp_range(self.name, offset, length, 0)  # raises ValueError
        props = self._properties(key)
        if props is None:
            raise self._not_found(key)
        start, end = clamp_range(self.name, offset, length, int(props.size))
        if start == end:
            return empty_stream()
        blob = self._blob(key)
        etag = props.etag

        def fetch(pos: int, n: int) -> bytes:
            with self._errors("read", key):
                return bytes(
                    blob.download_blob(
                        offset=pos,
                        length=n,
                        etag=etag,
                        match_condition=MatchConditions.IfNotModified,
                        max_concurrency=1,
                    ).readall()
                )

        def short_read(pos: int) -> TargetError:
            return TargetError(
                f"target '{self.name}': '{key}' in {self._url()} is shorter than expected at "
                f"byte {pos} (changed while being read); retry"
            )

        return buffered(ChunkReader(fetch, start, end, self.read_chunk, short_read))

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(self.name, prefix)
        found: list[ObjectInfo] = []
        with self._errors("list", prefix or "(everything)"):
            for item in self._container().list_blobs(name_starts_with=self.root + prefix):
                name = item.name[len(self.root) :]
                if not name or name.endswith("/"):
                    continue
                found.append(ObjectInfo(key=name, size=int(item.size)))
        return sorted_infos(found)

    # --- deleting --------------------------------------------------------------------

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        blob = self._blob(key)
        with self._errors("delete", key):
            try:
                blob.delete_blob(delete_snapshots="include")
            except ResourceNotFoundError as exc:
                if _code(exc) == "ContainerNotFound":
                    raise

    def free_bytes(self) -> int | None:
        return None  # a storage account reports no free space

    # --- errors ----------------------------------------------------------------------

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"target '{self.name}': object '{key}' not found (container '{self.container}', "
            f"blob '{self.root}{key}')"
        )

    def _errors(self, action: str, key: str, src: Path | None = None) -> translating:
        return translating(self.name, self.translate, action, key, src)

    def translate(self, exc: BaseException, action: str, key: str) -> TargetError:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceModifiedError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        head = f"target '{self.name}': cannot {action} '{key}' (container '{self.container}')"
        conn = f"Airflow connection '{self.conn_id}'"
        if isinstance(exc, ServiceRequestError):
            msg = (
                f"target '{self.name}': cannot reach the Azure Blob endpoint {self._url()} to "
                f"{action} '{key}' ({type(exc).__name__}); check that the storage account URL "
                f"in {conn} is right and reachable from this worker, then retry"
            )
        elif isinstance(exc, ServiceResponseError):
            msg = (
                f"{head}: the connection to {self._url()} failed during the request "
                f"({type(exc).__name__}); retry, or check the network to the storage account"
            )
        elif isinstance(exc, (ClientAuthenticationError, HttpResponseError)) and (
            _code(exc) in _AUTH_CODES or getattr(exc, "status_code", None) == 401
        ):
            msg = (
                f"{head}: Azure rejected the credentials ({_code(exc) or 'HTTP 401/403'}); fix the "
                f"account key, SAS token or service principal in {conn}"
            )
        elif isinstance(exc, ResourceNotFoundError) and _code(exc) == "ContainerNotFound":
            msg = (
                f"{head}: container '{self.container}' does not exist in {self._url()}; create it, "
                "or fix container: in the target's config"
            )
        elif isinstance(exc, ResourceModifiedError) or _code(exc) in (
            "ConditionNotMet",
            "TargetConditionNotMet",
        ):
            msg = f"{head}: the blob changed while it was being read; retry"
        elif isinstance(exc, HttpResponseError):
            status = getattr(exc, "status_code", None)
            if status == 403:
                msg = (
                    f"{head}: access denied (HTTP 403, {_code(exc) or 'no error code'}); check the "
                    f"credentials in {conn} and their rights on container '{self.container}'"
                )
            else:
                first = str(getattr(exc, "reason", "") or "") or short(exc).split(" RequestId:")[0]
                msg = f"{head}: Azure error {_code(exc) or '?'} (HTTP {status}): {short(Exception(first))}"
        elif isinstance(exc, OSError):
            msg = f"{head}: {exc.strerror or short(exc)}"
        else:
            msg = f"{head}: {type(exc).__name__}: {short(exc)}"
        return TargetError(redact(msg, self._secrets))


def _code(exc: Any) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")
