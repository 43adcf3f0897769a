"""The base of the object-store targets (s3, azure, gcs): a bucket or container under a
key prefix, reached through a provider hook's client that is built at first use.

The base holds the shape every object store shares — the lazy client built from the
Airflow connection, key mapping under the prefix, ``stat`` / ``open`` / ``list`` /
``delete`` / ``put_bytes`` with their not-found and error translation — and each store
declares what differs: its connection example, secret fields and client label as class
attributes, and a few primitives (build the client, look an object up, read a range,
upload bytes, list names, remove, translate a provider error). ``put`` stays with each
store: multipart uploads have little in common.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from include.backup.errors import ObjectNotFound, TargetError
from include.backup.targets._remote import Lazy, RemoteTarget, root_prefix, short, sorted_infos, translating
from include.backup.targets.base import Capabilities, ObjectInfo, PartialUpload, check_key, check_prefix
from include.backup.targets.streams import ChunkReader, buffered, clamp_range, empty_stream

_Partials = list[PartialUpload]  # (a method below is named list)


class ObjectStoreTarget(RemoteTarget):
    """A :class:`~include.backup.targets.base.Target` in an object store, under ``prefix``."""

    capabilities = Capabilities(free_space=False, atomic_replace=True)
    client_label = ""  # "S3", as in "cannot set up the S3 client"
    setup_hint = ""  # what to check when the client cannot be built

    def __init__(self, name: str, conn_id: str, prefix: str) -> None:
        super().__init__(name, conn_id)
        self.root = root_prefix(name, prefix)
        self._client = Lazy(self._make_client)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self._shown_at()})"

    def _shown_at(self) -> str:
        """Where the target's objects are, for its repr (never a secret)."""
        return repr(self.root)

    # --- what each store provides ----------------------------------------------------

    @abstractmethod
    def _build_client(self) -> Any:
        """The provider's client, once the connection is loaded (may add secrets)."""

    @abstractmethod
    def _location(self, key: str) -> str:
        """Where ``key`` is stored, for messages (``s3://bucket/prefix/key``)."""

    @abstractmethod
    def _lookup(self, full: str) -> tuple[int, Any] | None:
        """``(size, version)`` of the object at the full name, or None when missing."""

    @abstractmethod
    def _read_range(self, key: str, full: str, start: int, end: int, version: Any) -> BinaryIO:
        """A stream of ``[start, end)`` of the object, pinned to ``version``."""

    @abstractmethod
    def _upload_bytes(self, full: str, data: bytes) -> None: ...

    @abstractmethod
    def _names(self, full_prefix: str) -> Iterable[tuple[str, int]]:
        """``(full name, size)`` of every stored object under ``full_prefix``."""

    @abstractmethod
    def _remove(self, full: str) -> None:
        """Delete the object; a missing object is not an error."""

    @abstractmethod
    def translate(self, exc: BaseException, action: str, key: str) -> TargetError:
        """A TargetError for ``exc`` raised while trying to ``action`` ``key``."""

    # --- the client ------------------------------------------------------------------

    def _make_client(self) -> Any:
        self._load_connection()
        try:
            return self._build_client()
        except (TargetError, ImportError):
            raise
        except Exception as exc:  # noqa: BLE001 - anything the hook raises while building
            raise self._setup_error(exc) from None

    def _setup_error(self, exc: Exception) -> TargetError:
        return self._error(
            f"target '{self.name}': cannot set up the {self.client_label} client from Airflow "
            f"connection '{self.conn_id}' ({type(exc).__name__}: {short(exc)}); check "
            f"{self.setup_hint}"
        )

    def _key(self, key: str) -> str:
        check_key(self.name, key)
        return self.root + key

    def _errors(self, action: str, key: str, src: Path | None = None) -> translating:
        return translating(self.name, self.translate, action, key, src)

    # --- the Target interface --------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        full = self._key(key)
        with self._errors("upload", key):
            self._upload_bytes(full, data)
        return ObjectInfo(key=key, size=len(data))

    def _find(self, key: str) -> tuple[int, Any] | None:
        full = self._key(key)
        with self._errors("look up", key):
            return self._lookup(full)

    def stat(self, key: str) -> ObjectInfo | None:
        found = self._find(key)
        return None if found is None else ObjectInfo(key=key, size=found[0])

    def open(self, key: str, offset: int = 0, length: int | None = None) -> BinaryIO:
        if offset < 0 or (length is not None and length < 0):
            clamp_range(self.name, offset, length, 0)  # raises ValueError
        found = self._find(key)
        if found is None:
            raise self._not_found(key)
        size, version = found
        start, end = clamp_range(self.name, offset, length, size)
        if start == end:
            return empty_stream()
        return self._read_range(key, self._key(key), start, end, version)

    def _chunked(
        self, key: str, where: str, fetch: Callable[[int, int], bytes], start: int, end: int, chunk: int
    ) -> BinaryIO:
        """A stream of ``[start, end)`` of ``key`` (stored in ``where``), fetched ``chunk``
        bytes at a time by ``fetch(pos, n)``."""

        def short_read(pos: int) -> TargetError:
            return TargetError(
                f"target '{self.name}': '{key}' in {where} is shorter than expected at "
                f"byte {pos} (changed while being read); retry"
            )

        return buffered(ChunkReader(fetch, start, end, chunk, short_read))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(self.name, prefix)
        found: list[ObjectInfo] = []
        with self._errors("list", prefix or "(everything)"):
            for full, size in self._names(self.root + prefix):
                name = full[len(self.root) :]
                if not name or name.endswith("/"):
                    continue  # folder markers made by consoles are not objects
                found.append(ObjectInfo(key=name, size=size))
        return sorted_infos(found)

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors("delete", key):
            self._remove(full)

    def free_bytes(self) -> int | None:
        return None  # a bucket or container reports no free space

    # --- leftovers of killed puts (a store that can list them overrides these) -------

    def list_partial_uploads(self, prefix: str = "") -> _Partials:
        """None by default: Azure's uncommitted blocks and GCS's resumable upload sessions
        cannot be listed, and the store removes them itself after a week."""
        check_prefix(self.name, prefix)
        return []

    def remove_partial_upload(self, upload: PartialUpload) -> None:
        return None  # nothing was listed, so nothing to remove

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"target '{self.name}': object '{key}' not found ({self._location(key)})")
