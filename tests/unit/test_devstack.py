"""include/backup/devstack.py (make up / make down) without Airflow: the mail catcher's
handler, how a recorded process is recognised, and that stop() ends exactly the recorded
process groups (real processes)."""

from __future__ import annotations

import asyncio
import email
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from include.backup import devstack


def test_eml_folder_writes_one_file_per_mail(tmp_path: Path) -> None:
    handler = devstack.EmlFolder(str(tmp_path / "mail"))
    for subject in ("first", "second"):
        raw = f"From: a@example.com\r\nTo: b@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
        envelope = SimpleNamespace(original_content=raw, content=raw)
        assert asyncio.run(handler.handle_DATA(None, None, envelope)) == "250 OK"
    files = sorted((tmp_path / "mail").iterdir())
    assert [f.suffix for f in files] == [".eml", ".eml"]
    assert [email.message_from_bytes(f.read_bytes())["Subject"] for f in files] == ["first", "second"]


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)


def test_stop_ends_the_recorded_groups_and_nothing_else(tmp_path: Path) -> None:
    ours, other = _sleeper(), _sleeper()
    try:
        recorded = devstack._record(ours.pid)
        assert devstack.alive(recorded)
        # a recycled pid: same number, another start time, is not ours
        assert not devstack.alive({**recorded, "start": int(recorded["start"] or 0) + 1})
        state = {"processes": {"thing": recorded}, "clusters": {"gone": str(tmp_path / "cluster")}}
        (tmp_path / "cluster").mkdir()
        (tmp_path / devstack.STATE_FILE).write_text(json.dumps(state))
        assert devstack.stop(tmp_path) == ["thing"]
        ours.wait(timeout=30)
        assert other.poll() is None, "stop() ended a process it did not start"
        assert not (tmp_path / "cluster").exists() and devstack.load_state(tmp_path) is None
        assert devstack.stop(tmp_path) == []  # twice: nothing recorded, nothing done
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


def test_every_service_has_a_compose_counterpart_once() -> None:
    names = [s.name for s in devstack.SERVICES]
    composes = [s.compose for s in devstack.SERVICES]
    assert len(set(names)) == len(names) and len(set(composes)) == len(composes)
    assert not set(composes) & set(devstack.COMPOSE_ONLY)
