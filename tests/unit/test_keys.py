"""KeyRing: loading, validation, rotation, and never showing key material."""

from __future__ import annotations

import base64
import io
import json
import logging
import pickle
import stat
from datetime import date
from pathlib import Path

import pytest
from airflow._shared.secrets_masker.secrets_masker import DEFAULT_SENSITIVE_FIELDS, SecretsMasker

from include.backup.errors import BackupError, KeyNotFoundError
from include.backup.keys import KeyRing, KeyRingError
from include.backup.pipeline.stream import open_sealed, seal

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
B1 = base64.b64encode(K1).decode()
B2 = base64.b64encode(K2).decode()


def ring_json(**over) -> dict:
    data = {
        "keys": {"k1": B1, "k2": B2},
        "active": "k2",
        "created": {"k1": "2026-01-01", "k2": "2026-02-01"},
    }
    data.update(over)
    return data


def assert_no_key_material(text: str) -> None:
    for secret in (B1, B2, K1.hex(), K2.hex(), repr(K1), repr(K2)):
        assert secret not in text


def test_from_json() -> None:
    ring = KeyRing.from_json(ring_json())
    assert ring.active() == ("k2", K2)
    assert ring.active_id == "k2"
    assert ring.get("k1") == K1 and ring("k1") == K1
    assert ring.key_ids == ["k1", "k2"]
    assert "k1" in ring and "nope" not in ring and len(ring) == 2
    assert ring.created("k1") == date(2026, 1, 1)
    assert ring.age_days("k1", today=date(2026, 1, 31)) == 30
    assert ring.age_days(today=date(2026, 2, 11)) == 10  # active key by default
    assert KeyRing.from_json(json.dumps(ring_json())) == ring


def test_single_key_without_active_is_unambiguous() -> None:
    ring = KeyRing.from_json({"keys": {"only": B1}})
    assert ring.active() == ("only", K1)
    assert ring.age_days("only") is None


def test_unknown_key_id_lists_known_ids_but_no_key() -> None:
    ring = KeyRing.from_json(ring_json())
    with pytest.raises(KeyNotFoundError) as exc:
        ring.get("k9")
    msg = str(exc.value)
    assert "'k9'" in msg and "k1, k2" in msg
    assert_no_key_material(msg)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (ring_json(keys={"k1": "not base64!!", "k2": B2}), "key 'k1' is not valid base64"),
        (
            ring_json(keys={"k1": base64.b64encode(b"short").decode(), "k2": B2}),
            "key 'k1' decodes to 5 bytes, expected exactly 32",
        ),
        (ring_json(keys={"k1": base64.b64encode(bytes(33)).decode(), "k2": B2}), "decodes to 33 bytes"),
        (ring_json(keys={"k1": 12345, "k2": B2}), "key 'k1' must be a base64 string"),
        ({"keys": {"k1": B1, "k2": B2}}, "'active' is missing"),
        (ring_json(active="k3"), "active key id 'k3' is not among the keys (k1, k2)"),
        (ring_json(keys={}), "'keys' must be a non-empty object"),
        ({"active": "k1"}, "'keys' must be a non-empty object"),
        (ring_json(created={"k1": "01/02/2026"}), "created date '01/02/2026' of key 'k1' is not YYYY-MM-DD"),
        (ring_json(created={"k7": "2026-01-01"}), "unknown key id 'k7'"),
        (ring_json(extra_field=1), "unknown field(s) extra_field"),
        (ring_json(keys={"": B1, "k2": B2}), "key id '' must be a non-empty string"),
        ("{not json", "not valid JSON"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_invalid_definitions(data, fragment: str) -> None:
    with pytest.raises(KeyRingError) as exc:
        KeyRing.from_json(data, source="keys connection 'backup_keys'")
    msg = str(exc.value)
    assert fragment in msg
    assert msg.startswith("keys connection 'backup_keys'")
    assert_no_key_material(msg)
    assert isinstance(exc.value, BackupError) and isinstance(exc.value, ValueError)


def test_repr_and_str_have_no_key_material() -> None:
    ring = KeyRing.from_json(ring_json())
    for text in (repr(ring), str(ring), f"{ring}", repr([ring])):
        assert_no_key_material(text)
        assert "k1" in text and "k2" in text


def test_ring_cannot_be_pickled() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(KeyRing.from_json(ring_json()))


def test_rotation_keeps_old_keys() -> None:
    ring = KeyRing.from_json(ring_json())
    new = ring.rotated("k3", today=date(2026, 3, 1))
    assert new.active_id == "k3" and len(new.active()[1]) == 32
    assert new.get("k1") == K1 and new.get("k2") == K2
    assert new.age_days("k3", today=date(2026, 3, 11)) == 10
    assert ring.active_id == "k2"  # the original is unchanged
    with pytest.raises(KeyRingError, match="already exists"):
        new.rotated("k1")
    added = ring.add_key("k4", K1)
    assert added.active_id == "k2" and added.get("k4") == K1
    with pytest.raises(KeyRingError, match="exactly 32 bytes"):
        ring.add_key("k5", b"short")


def test_generate_writes_0600_file_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "backup-keys.json"
    ring = KeyRing.generate(path, "demo-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = KeyRing.from_file(path)
    assert loaded == ring and loaded.active_id == "demo-1"
    assert loaded.age_days("demo-1") == 0
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        KeyRing.generate(path, "demo-2")
    rotated = loaded.rotated("demo-2")
    rotated.save(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyRing.from_file(path).key_ids == ["demo-1", "demo-2"]
    assert [p.name for p in path.parent.iterdir()] == ["backup-keys.json"]


def test_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist"):
        KeyRing.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"keys": {"k1": "@@@"}, "active": "k1"}))
    with pytest.raises(KeyRingError, match=rf"key file {bad}: key 'k1' is not valid base64"):
        KeyRing.from_file(bad)


def test_ring_decrypts_what_it_encrypted() -> None:
    ring = KeyRing.from_json(ring_json())
    key_id, kek = ring.active()
    out = io.BytesIO()
    seal(io.BytesIO(b"payload" * 1000), out, kek=kek, key_id=key_id)
    rotated = ring.rotated("k3")
    assert open_sealed(io.BytesIO(out.getvalue()), rotated, "zstd").read() == b"payload" * 1000
    only_new = KeyRing({"k3": rotated.get("k3")}, "k3")
    with pytest.raises(KeyNotFoundError, match="'k2'"):
        open_sealed(io.BytesIO(out.getvalue()), only_new, "zstd")


# -- Airflow connections (resolved from AIRFLOW_CONN_<ID> environment variables) --------------


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, conn: dict) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Our warnings (Airflow's masker logs its own about short values)."""
    return [r for r in caplog.records if r.name == "include.backup.keys"]


def conn_extra(**over) -> dict:
    """The connection's extra in the current shape: the keys under ``secret_keys``."""
    data = ring_json(**over)
    data["secret_keys"] = data.pop("keys")
    return data


def test_from_connection_extra(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    set_conn(monkeypatch, "backup_keys", {"conn_type": "generic", "extra": conn_extra()})
    with caplog.at_level(logging.WARNING, logger="include.backup.keys"):
        ring = KeyRing.from_connection("backup_keys")
    assert ring.active() == ("k2", K2) and ring.get("k1") == K1
    assert ring.created("k2") == date(2026, 2, 1)
    assert "backup_keys" in repr(ring)
    assert_no_key_material(repr(ring))
    assert not ours(caplog)  # the current shape loads without a warning


def test_from_connection_old_shape_still_loads_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Rings stored under the extra ``keys`` (shown in clear by Airflow) keep working, and
    every load says how to move them."""
    set_conn(monkeypatch, "old_keys", {"conn_type": "generic", "extra": ring_json()})
    with caplog.at_level(logging.WARNING, logger="include.backup.keys"):
        ring = KeyRing.from_connection("old_keys")
    assert ring == KeyRing.from_json(ring_json())
    [record] = ours(caplog)
    msg = record.getMessage()
    assert "'keys'" in msg and "in clear" in msg and "Rename the field to 'secret_keys'" in msg
    assert "GET /api/v2/connections/old_keys" in msg and "AIRFLOW_CONN_OLD_KEYS" in msg
    assert_no_key_material(msg)


def test_from_connection_both_shapes_prefers_secret_keys(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    extra = {**conn_extra(active="k1"), "keys": {"stale": B2}}
    set_conn(monkeypatch, "both_keys", {"conn_type": "generic", "extra": extra})
    with caplog.at_level(logging.WARNING, logger="include.backup.keys"):
        ring = KeyRing.from_connection("both_keys")
    assert ring.key_ids == ["k1", "k2"] and ring.active_id == "k1"
    [record] = ours(caplog)
    assert "Remove 'keys'" in record.getMessage()


def test_connection_shape_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = KeyRing.from_json(ring_json())
    conn = ring.to_connection()
    assert conn["conn_type"] == "generic" and "keys" not in conn["extra"]
    assert conn["extra"] == conn_extra()
    set_conn(monkeypatch, "round_trip", conn)
    assert KeyRing.from_connection("round_trip") == ring
    # a key file may use the connection's field name too
    assert KeyRing.from_json(conn["extra"]) == ring
    with pytest.raises(KeyRingError, match="both 'keys' and 'secret_keys'"):
        KeyRing.from_json({**conn["extra"], "keys": {"k1": B1}})


def airflow_masker() -> SecretsMasker:
    """Airflow's masker with the sensitive names the api-server uses by default."""
    masker = SecretsMasker()
    masker.sensitive_variables_fields = list(DEFAULT_SENSITIVE_FIELDS)
    return masker


def test_airflow_masks_the_connection_shape() -> None:
    """What the REST API does to a connection's extra (ConnectionResponse.redact_extra:
    ``redact(json.loads(extra))``): the keys are hidden, ids and dates stay readable."""
    extra = KeyRing.from_json(ring_json()).to_connection_extra()
    shown = airflow_masker().redact(extra)
    assert shown["secret_keys"] == {"k1": "***", "k2": "***"}
    assert shown["active"] == "k2" and shown["created"] == ring_json()["created"]
    assert_no_key_material(json.dumps(shown))
    # the old shape is not masked: this is what the rename fixes
    assert airflow_masker().redact(ring_json())["keys"] == {"k1": B1, "k2": B2}


def test_from_connection_login_password(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch,
        "single_key",
        {"conn_type": "generic", "login": "kx", "password": B1, "extra": {"created": "2026-05-01"}},
    )
    ring = KeyRing.from_connection("single_key")
    assert ring.active() == ("kx", K1)
    assert ring.created("kx") == date(2026, 5, 1)


@pytest.mark.parametrize(
    "conn, fragment",
    [
        ({"conn_type": "generic"}, "has no keys"),
        ({"conn_type": "generic", "login": "kx", "password": "bad base64!"}, "key 'kx' is not valid base64"),
        ({"conn_type": "generic", "extra": {"secret_keys": {"k1": B1, "k2": B2}}}, "'active' is missing"),
        ({"conn_type": "generic", "extra": {"keys": {"k1": B1, "k2": B2}}}, "'active' is missing"),
        (
            {
                "conn_type": "generic",
                "extra": {"secret_keys": {"k1": base64.b64encode(bytes(16)).decode()}, "active": "k1"},
            },
            "16 bytes",
        ),
    ],
)
def test_from_connection_errors(monkeypatch: pytest.MonkeyPatch, conn: dict, fragment: str) -> None:
    set_conn(monkeypatch, "broken_keys", conn)
    with pytest.raises(KeyRingError) as exc:
        KeyRing.from_connection("broken_keys")
    assert fragment in str(exc.value) and "keys connection 'broken_keys'" in str(exc.value)
    assert_no_key_material(str(exc.value))


def test_from_connection_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_KEYS", raising=False)
    with pytest.raises(KeyRingError, match="keys connection 'no_such_keys' is not defined"):
        KeyRing.from_connection("no_such_keys")
