"""Key-encryption keys (KEKs): the key ring backups are encrypted and decrypted with.

Keys live in an Airflow connection (or secrets backend), never in the YAML config. The
connection's extra holds::

    {"secret_keys": {"<id>": "<base64 of 32 bytes>", ...},
     "active": "<id>",                      # new backups are wrapped with this key
     "created": {"<id>": "YYYY-MM-DD", ...}}  # optional, drives rotation alerts

or, for a single key, ``login`` = key id and ``password`` = base64 key. Old keys stay in the
ring after rotation: a backup names its key id, and needs that key to be restored.

Why ``secret_keys``: Airflow hides the value of an extra field only when the field's NAME
looks sensitive (it contains "secret", "password", "private_key", ... : Airflow's
``should_hide_value_for_key``); the password is hidden too. The REST API
(``GET /api/v2/connections/{id}``) and the UI then show ``"***"`` for every key. An extra
named ``keys`` (the first shape of this connection) is shown in clear: it is still read,
with a warning saying how to move.

A key file (``--key-file`` / ``$BACKUP_KEY_FILE``) holds the same JSON with the field
named ``keys`` (see :meth:`KeyRing.to_json`); ``secret_keys`` is accepted there too.

Key material never appears in messages, reprs or logs; loading from a connection also
registers every key with Airflow's secrets masker.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from include.backup.errors import BackupError, KeyNotFoundError

log = logging.getLogger(__name__)

KEY_SIZE = 32
CONN_KEYS_FIELD = "secret_keys"
"""The connection extra field holding the keys. Its name contains "secret", so Airflow
hides its values in the UI, the REST API and task logs (should_hide_value_for_key)."""
LEGACY_KEYS_FIELD = "keys"
"""The first shape of the connection: still read, but Airflow shows it in clear."""
RING_FIELDS = ("active", "created")


class KeyRingError(BackupError, ValueError):
    """The key ring definition is malformed. Names the key id, never its value."""


class KeyConnectionMissing(KeyRingError):
    """No connection of that id where this process looks (secrets backends, variables)."""


def _today() -> date:
    return datetime.now(UTC).date()


def _decode_key(key_id: str, value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise KeyRingError(
            f"{where}: key {key_id!r} must be a base64 string of {KEY_SIZE} bytes (generate "
            "one with: python -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())')"
        )
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(
            f"{where}: key {key_id!r} is not valid base64; store the key as standard base64 "
            f"of {KEY_SIZE} random bytes"
        ) from None
    if len(raw) != KEY_SIZE:
        raise KeyRingError(
            f"{where}: key {key_id!r} decodes to {len(raw)} bytes, expected exactly {KEY_SIZE} "
            "(AES-256); generate a new 32-byte key"
        )
    return raw


def _parse_date(key_id: str, value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise KeyRingError(f"{where}: created date {value!r} of key {key_id!r} is not YYYY-MM-DD") from None


def _check_id(key_id: Any, where: str) -> str:
    if not isinstance(key_id, str) or not key_id or len(key_id.encode()) > 255:
        raise KeyRingError(f"{where}: key id {key_id!r} must be a non-empty string of at most 255 bytes")
    return key_id


class KeyRing:
    """Immutable set of KEKs by id, with the id new backups use (``active``).

    Callable: ``ring(key_id)`` returns the key, so a ring can be passed wherever the
    pipeline expects ``keys: Callable[[str], bytes]``.
    """

    __slots__ = ("_keys", "_active", "_created", "source")

    def __init__(
        self,
        keys: Mapping[str, bytes],
        active: str,
        created: Mapping[str, date] | None = None,
        *,
        source: str = "key ring",
    ) -> None:
        self.source = source
        if not keys:
            raise KeyRingError(f"{source}: no keys defined; add at least one key")
        for key_id, key in keys.items():
            _check_id(key_id, source)
            if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
                raise KeyRingError(f"{source}: key {key_id!r} must be exactly {KEY_SIZE} bytes")
        if active not in keys:
            raise KeyRingError(
                f"{source}: active key id {active!r} is not among the keys "
                f"({', '.join(sorted(keys))}); set 'active' to one of them"
            )
        self._keys = {k: bytes(v) for k, v in keys.items()}
        self._active = active
        self._created = dict(created or {})
        for key_id in self._created:
            if key_id not in self._keys:
                raise KeyRingError(f"{source}: created date given for unknown key id {key_id!r}")

    # -- access ----------------------------------------------------------------------------
    @property
    def active_id(self) -> str:
        return self._active

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def active(self) -> tuple[str, bytes]:
        """``(key id, key)`` that new backups are encrypted with."""
        return self._active, self._keys[self._active]

    def get(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyNotFoundError(
                f"key id {key_id!r} is not in the {self.source} (known ids: "
                f"{', '.join(self.key_ids)}); restore needs the key the backup was made with: "
                "add it back to the keys connection"
            ) from None

    __call__ = get

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def created(self, key_id: str) -> date | None:
        self.get(key_id)
        return self._created.get(key_id)

    def age_days(self, key_id: str | None = None, today: date | None = None) -> int | None:
        """Days since ``key_id`` (default: the active key) was created; None if undated."""
        created = self.created(key_id or self._active)
        if created is None:
            return None
        return ((today or _today()) - created).days

    def __repr__(self) -> str:
        # Ids only: key bytes must never reach a log line or a traceback.
        return f"KeyRing(active={self._active!r}, ids={self.key_ids!r}, source={self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyRing):
            return NotImplemented
        return (self._keys, self._active, self._created) == (
            other._keys,
            other._active,
            other._created,
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        # Pickling would copy key bytes into wherever the pickle goes (e.g. XCom).
        raise TypeError("KeyRing cannot be pickled: pass the key connection id instead")

    # -- changes (return new rings) --------------------------------------------------------
    def add_key(
        self,
        key_id: str,
        key: bytes | None = None,
        *,
        created: date | None = None,
        activate: bool = False,
    ) -> KeyRing:
        """A new ring with ``key_id`` added (a fresh random key unless ``key`` is given)."""
        _check_id(key_id, self.source)
        if key_id in self._keys:
            raise KeyRingError(
                f"{self.source}: key id {key_id!r} already exists; choose a new id "
                "(ids must never be reused, backups refer to them)"
            )
        keys = dict(self._keys)
        keys[key_id] = key if key is not None else secrets.token_bytes(KEY_SIZE)
        dates = dict(self._created)
        dates[key_id] = created or _today()
        return KeyRing(keys, key_id if activate else self._active, dates, source=self.source)

    def rotated(self, new_id: str, *, today: date | None = None) -> KeyRing:
        """Rotation: a new ring with a fresh key ``new_id`` made active; old keys kept."""
        return self.add_key(new_id, created=today, activate=True)

    def without(self, key_id: str) -> KeyRing:
        """A new ring without ``key_id`` (retired: no backup needs it any more). The active
        key cannot be removed: rotate first."""
        self.get(key_id)
        if key_id == self._active:
            raise KeyRingError(
                f"{self.source}: key {key_id!r} is the active key; rotate first "
                "(python -m include.backup keys rotate), then retire it"
            )
        keys = {k: v for k, v in self._keys.items() if k != key_id}
        dates = {k: d for k, d in self._created.items() if k != key_id}
        return KeyRing(keys, self._active, dates, source=self.source)

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The connection-extra structure, INCLUDING KEY MATERIAL: store it only in a
        secrets backend / connection or a 0600 file, never log it."""
        return {
            "keys": {k: base64.b64encode(v).decode("ascii") for k, v in sorted(self._keys.items())},
            "active": self._active,
            "created": {k: d.isoformat() for k, d in sorted(self._created.items())},
        }

    def to_connection_extra(self) -> dict[str, Any]:
        """The connection's extra: :meth:`to_json` with the keys under ``secret_keys``, the
        field name Airflow masks. INCLUDES KEY MATERIAL, like :meth:`to_json`."""
        data = self.to_json()
        data[CONN_KEYS_FIELD] = data.pop(LEGACY_KEYS_FIELD)
        return data

    def to_connection(self, conn_type: str = "generic") -> dict[str, Any]:
        """The whole connection as Airflow's JSON form (the value of an
        ``AIRFLOW_CONN_<ID>`` variable, or the body of ``POST /api/v2/connections`` once a
        ``connection_id`` is added with ``extra`` serialised). INCLUDES KEY MATERIAL."""
        return {"conn_type": conn_type, "extra": self.to_connection_extra()}

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the ring as JSON to ``path`` with mode 0600 (atomically)."""
        target = Path(path)
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"key file {target} already exists; refusing to overwrite keys "
                "(pass overwrite=True after making sure no backup needs the old ones)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600, so the key is never readable by others, not even
        # briefly; rename makes the new file appear complete or not at all.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    # -- loaders ---------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str | bytes, *, source: str = "key ring") -> KeyRing:
        """Build from ``{"keys": {id: base64}, "active": id, "created": {id: date}}``."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise KeyRingError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, Mapping):
            raise KeyRingError(f"{source}: expected a JSON object with 'keys' and 'active'")
        if CONN_KEYS_FIELD in data:  # the connection's field name, accepted in a file too
            if LEGACY_KEYS_FIELD in data:
                raise KeyRingError(
                    f"{source}: both 'keys' and 'secret_keys' are given; keep only 'secret_keys'"
                )
            data = {(LEGACY_KEYS_FIELD if k == CONN_KEYS_FIELD else k): v for k, v in data.items()}
        unknown = set(data) - {"keys", "active", "created"}
        if unknown:
            raise KeyRingError(
                f"{source}: unknown field(s) {', '.join(sorted(unknown))}; allowed: "
                "keys (or secret_keys), active, created"
            )
        raw_keys = data.get("keys")
        if not isinstance(raw_keys, Mapping) or not raw_keys:
            raise KeyRingError(f"{source}: 'keys' must be a non-empty object mapping key id to base64 key")
        keys = {_check_id(k, source): _decode_key(k, v, source) for k, v in raw_keys.items()}
        active = data.get("active")
        if active is None:
            if len(keys) != 1:
                raise KeyRingError(
                    f"{source}: 'active' is missing; set it to the id new backups should use "
                    f"(one of {', '.join(sorted(keys))})"
                )
            active = next(iter(keys))  # a single key is unambiguous
        raw_created = data.get("created") or {}
        if not isinstance(raw_created, Mapping):
            raise KeyRingError(f"{source}: 'created' must map key id to YYYY-MM-DD")
        created = {k: _parse_date(k, v, source) for k, v in raw_created.items()}
        return cls(keys, active, created, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyRing:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyRingError(
                f"key file {p} does not exist; create one with KeyRing.generate(path, key_id)"
            ) from None
        return cls.from_json(text, source=f"key file {p}")

    @classmethod
    def generate(cls, path: str | os.PathLike[str], key_id: str, *, overwrite: bool = False) -> KeyRing:
        """Create a key file (mode 0600) holding one fresh random key, active."""
        ring = cls(
            {key_id: secrets.token_bytes(KEY_SIZE)},
            key_id,
            {key_id: _today()},
            source=f"key file {path}",
        )
        ring.save(path, overwrite=overwrite)
        return ring

    @classmethod
    def from_connection(cls, conn_id: str) -> KeyRing:
        """Load from an Airflow connection (extra ``secret_keys``, or login = id /
        password = key; the old extra ``keys`` with a warning)."""
        from airflow.sdk import BaseHook  # lazy: Airflow: not loaded by the CLI and config checks

        try:
            from airflow.sdk.exceptions import (
                AirflowNotFoundException,  # lazy: Airflow: not loaded by the CLI and config checks
            )
        except ImportError:  # pragma: no cover - older task SDKs
            from airflow.exceptions import (
                AirflowNotFoundException,  # lazy: Airflow: not loaded by the CLI and config checks
            )

        source = f"keys connection {conn_id!r}"
        try:
            conn = BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            raise KeyConnectionMissing(
                f"{source} is not defined: create it (type generic) with extra "
                '{"secret_keys": {"<id>": "<base64 32-byte key>"}, "active": "<id>"}, in the '
                f"Airflow UI, a secrets backend or AIRFLOW_CONN_{conn_id.upper()}"
            ) from None
        extra = conn.extra_dejson or {}
        if CONN_KEYS_FIELD in extra or LEGACY_KEYS_FIELD in extra:
            ring = cls.from_json(_ring_fields(extra, conn_id, source), source=source)
        elif conn.login and conn.password:
            key_id = _check_id(conn.login, source)
            created = extra.get("created")
            ring = cls(
                {key_id: _decode_key(key_id, conn.password, source)},
                key_id,
                {key_id: _parse_date(key_id, created, source)} if created else None,
                source=source,
            )
        else:
            raise KeyRingError(
                f'{source} has no keys: put {{"secret_keys": {{id: base64}}, "active": id}} in '
                "its extra, or set login = key id and password = base64 of a 32-byte key"
            )
        _mask(ring)
        return ring


def _ring_fields(extra: Mapping[str, Any], conn_id: str, source: str) -> dict[str, Any]:
    """The key ring part of a connection's extra, keys under ``keys``.

    The old field ``keys`` is read (backups made with it must stay restorable) but Airflow
    shows its values in clear, so each load warns how to move; with both fields present,
    ``secret_keys`` wins and the stale copy is pointed out."""
    if LEGACY_KEYS_FIELD in extra:
        if CONN_KEYS_FIELD in extra:
            log.warning(
                "%s has both 'secret_keys' and 'keys' in its extra: using 'secret_keys'. Remove "
                "'keys' from the extra: Airflow shows it in clear in the UI and in "
                "GET /api/v2/connections/%s",
                source,
                conn_id,
            )
        else:
            log.warning(
                "%s keeps its key ring in the extra field 'keys', which Airflow shows in clear "
                "in the UI and in GET /api/v2/connections/%s. Rename the field to 'secret_keys' "
                "(the values stay the same; Airflow masks fields whose name contains 'secret'): "
                "edit the connection's extra, or re-create it, e.g. with "
                'AIRFLOW_CONN_%s=\'{"conn_type": "generic", "extra": {"secret_keys": '
                '{...}, "active": "..."}}\'',
                source,
                conn_id,
                conn_id.upper(),
            )
    field = CONN_KEYS_FIELD if CONN_KEYS_FIELD in extra else LEGACY_KEYS_FIELD
    ring = {LEGACY_KEYS_FIELD: extra[field]}
    ring.update({k: extra[k] for k in RING_FIELDS if k in extra})
    return ring


def ring_fields_of_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    """The key ring part of a connection's extra (``secret_keys`` preferred over the old
    ``keys``), ready for :meth:`KeyRing.from_json`; without the warnings of a load."""
    field = CONN_KEYS_FIELD if CONN_KEYS_FIELD in extra else LEGACY_KEYS_FIELD
    ring = {LEGACY_KEYS_FIELD: extra.get(field)}
    ring.update({k: extra[k] for k in RING_FIELDS if k in extra})
    return ring


def _mask(ring: KeyRing) -> None:
    """Register key material with Airflow's secrets masker so it is redacted from logs."""
    try:
        from airflow.sdk.log import mask_secret  # lazy: Airflow: not loaded by the CLI and config checks
    except ImportError:  # pragma: no cover - Airflow always present where connections are
        return
    for encoded in ring.to_json()["keys"].values():
        mask_secret(encoded)
