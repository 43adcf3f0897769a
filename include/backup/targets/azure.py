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

from include.backup.errors import TargetError
from include.backup.targets._remote import (
    MiB,
    other_error,
    part_ranges,
    run_bounded,
    short,
    source_error,
    source_size,
)
from include.backup.targets.base import ObjectInfo
from include.backup.targets.object_store import ObjectStoreTarget
from include.backup.targets.streams import read_slice
from include.backup.targets.tiers import FROZEN_CLASSES, TierState, check_class

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


class AzureBlobTarget(ObjectStoreTarget):
    """A :class:`~include.backup.targets.base.Target` in an Azure Blob container, under ``prefix``."""

    connection_example = "wasb://ACCOUNT_NAME:ACCOUNT_KEY@ACCOUNT_NAME.blob.core.windows.net"
    secret_fields = ("password", "extra.connection_string", "extra.shared_access_key", "extra.sas_token")
    client_label = "Azure Blob"
    setup_hint = "the connection's account URL (host), login, key and extra"

    def __init__(  # the store's own options are keyword-only
        self, name: str, conn_id: str, container: str, prefix: str = "", *,
        block_size: int = DEFAULT_BLOCK_SIZE, concurrency: int = DEFAULT_CONCURRENCY,
        read_chunk: int = DEFAULT_READ_CHUNK, storage_class: str | None = None, thaw_tier: str = "Standard"
    ) -> None:
        self.container = container
        # Payloads (put) go to this access tier; put_bytes (manifests, records) takes the
        # account's default, which Azure allows to be Hot or Cool only: never Archive.
        self.storage_class = None if storage_class is None else check_class("azure_blob", storage_class, name)
        self.thaw_tier = thaw_tier
        self.block_size = block_size
        self.concurrency = max(1, concurrency)
        self.read_chunk = read_chunk
        super().__init__(name, conn_id, prefix)

    def _shown_at(self) -> str:
        return f"container {self.container!r}, prefix {self.root!r}"

    # --- the client ------------------------------------------------------------------

    def _build_client(self) -> Any:
        from airflow.providers.microsoft.azure.hooks.wasb import (
            WasbHook,  # lazy: provider hook: loaded when the connection is used
        )

        service = WasbHook(wasb_conn_id=self.conn_id).get_conn()
        return service.get_container_client(self.container)

    def _container(self) -> Any:
        return self._client.get()

    def _blob(self, full: str) -> Any:
        return self._container().get_blob_client(full)

    def _url(self) -> str:
        client = self._client.peek()
        return str(client.url) if client is not None else f"container '{self.container}'"

    def _location(self, key: str) -> str:
        return f"container '{self.container}', blob '{self.root}{key}'"

    # --- writing ---------------------------------------------------------------------

    def put(self, key: str, src: Path) -> ObjectInfo:
        blob = self._blob(self._key(key))
        size = source_size(self.name, key, src)
        if size <= self.block_size:
            try:
                data = src.read_bytes()
            except OSError as exc:
                raise source_error(self.name, key, src, exc) from exc
            with self._errors("upload", key):
                blob.upload_blob(data, length=len(data), overwrite=True, validate_content=True,
                                 **self._tier_args())  # fmt: skip
            return ObjectInfo(key=key, size=len(data))
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
        from azure.storage.blob import BlobBlock  # lazy: Azure SDK is heavy: loaded when Azure is used

        with self._errors("upload", key, src):
            ids = run_bounded(jobs, self.concurrency)
            # The blob appears (or its new version replaces the old) only here.
            blob.commit_block_list([BlobBlock(block_id=i) for i in ids], **self._tier_args())
        return ObjectInfo(key=key, size=size)

    def _upload_bytes(self, full: str, data: bytes) -> None:
        self._blob(full).upload_blob(data, length=len(data), overwrite=True, validate_content=True)

    def _tier_args(self) -> dict[str, Any]:
        if self.storage_class is None:
            return {}
        from azure.storage.blob import StandardBlobTier  # lazy: Azure SDK is heavy: loaded when Azure is used

        return {"standard_blob_tier": StandardBlobTier(self.storage_class)}

    # --- storage classes (targets/tiers.py) ------------------------------------------

    store_kind = "azure_blob"

    def tier_state(self, key: str) -> TierState | None:
        """From the blob's properties only: its access tier, whether a rehydration is
        pending (``archive_status``), size, and the Content-MD5 Azure checked on upload."""
        from azure.core.exceptions import (
            ResourceNotFoundError,  # lazy: Azure SDK is heavy: loaded when Azure is used
        )

        full = self._key(key)
        with self._errors("look up", key):
            try:
                props = self._blob(full).get_blob_properties()
            except ResourceNotFoundError as exc:
                if _code(exc) == "ContainerNotFound":
                    raise
                return None
        tier = str(props.blob_tier or "Hot")
        pending = str(props.archive_status or "").startswith("rehydrate-pending")
        sums = {"etag": str(props.etag or "").strip('"')}
        md5 = props.content_settings.content_md5 if props.content_settings else None
        if md5:
            sums["md5"] = bytes(md5).hex()
        return TierState(
            key=key,
            size=int(props.size),
            storage_class=tier,
            readable=tier not in FROZEN_CLASSES["azure_blob"],
            thawing=pending,
            checksums=sums,
        )

    def set_storage_class(self, key: str, storage_class: str) -> None:
        with self._errors(f"set access tier {storage_class} on", key):
            self._blob(self._key(key)).set_standard_blob_tier(storage_class)

    def request_thaw(self, key: str, tier: str) -> bool:
        """Rehydrate an Archive blob by setting a readable tier (the target's storage_class
        when that is readable, else Hot) at priority ``tier``; False when a rehydration is
        already pending or the blob is readable."""
        state = self.tier_state(key)
        if state is None or state.readable or state.thawing:
            return False
        back = self.storage_class if self.storage_class not in (None, "Archive") else "Hot"
        with self._errors(f"rehydrate ({tier}) to {back}", key):
            self._blob(self._key(key)).set_standard_blob_tier(back, rehydrate_priority=tier)
        return True

    # --- reading ---------------------------------------------------------------------

    def _lookup(self, full: str) -> tuple[int, Any] | None:
        from azure.core.exceptions import (
            ResourceNotFoundError,  # lazy: Azure SDK is heavy: loaded when Azure is used
        )

        try:
            props = self._blob(full).get_blob_properties()
        except ResourceNotFoundError as exc:
            if _code(exc) == "ContainerNotFound":
                raise
            return None
        return int(props.size), props.etag

    def _read_range(self, key: str, full: str, start: int, end: int, version: Any) -> BinaryIO:
        from azure.core import MatchConditions  # lazy: Azure SDK is heavy: loaded when Azure is used

        blob = self._blob(full)

        def fetch(pos: int, n: int) -> bytes:
            with self._errors("read", key):
                return bytes(
                    blob.download_blob(
                        offset=pos,
                        length=n,
                        etag=version,
                        match_condition=MatchConditions.IfNotModified,
                        max_concurrency=1,
                    ).readall()
                )

        return self._chunked(key, self._url(), fetch, start, end, self.read_chunk)

    def _names(self, full_prefix: str) -> Iterator[tuple[str, int]]:
        for item in self._container().list_blobs(name_starts_with=full_prefix):
            yield item.name, int(item.size)

    # --- deleting --------------------------------------------------------------------

    def _remove(self, full: str) -> None:
        from azure.core.exceptions import (
            ResourceNotFoundError,  # lazy: Azure SDK is heavy: loaded when Azure is used
        )

        try:
            self._blob(full).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if _code(exc) == "ContainerNotFound":
                raise

    # --- errors ----------------------------------------------------------------------

    def translate(self, exc: BaseException, action: str, key: str) -> TargetError:
        from azure.core.exceptions import (  # lazy: Azure SDK is heavy: loaded when Azure is used
            ClientAuthenticationError,
            HttpResponseError,
            ResourceModifiedError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        head = f"target '{self.name}': cannot {action} '{key}' (container '{self.container}')"
        conn = self._conn_ref()
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
        elif _code(exc) == "BlobArchived":
            msg = (
                f"{head}: the blob is in the Archive tier and cannot be read before it is "
                "rehydrated; `restore` requests that and says how to go on "
                "(docs/targets.md#archive-tiers)"
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
        else:
            msg = other_error(head, exc)
        return self._error(msg)


def _code(exc: Any) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")
