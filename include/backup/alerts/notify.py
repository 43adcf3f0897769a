"""On-call alerts: what they say (:func:`render`) and how they are mailed (:func:`send`).

Why one module of about 500 lines: the alert type, its rendering, redaction, the dedupe
state and the SMTP send are one pipeline that every alert kind goes through.

An :class:`Alert` carries metadata only — names, ids, sizes, times — never a secret; its
text still passes :func:`redact` before it is rendered, as a second line of defence
(exception messages from drivers sometimes quote a URI with a password in it).

Mail goes through the SMTP provider's ``SmtpHook`` and the Airflow connection named by
``dr.smtp_conn_id`` (default ``smtp_default``). Each alert has a dedupe key; a small JSON
state file remembers when each key was last mailed, so the ``dr_monitor`` DAG, which runs
every 15 minutes, mails a violation once — then again only as a reminder after
``window`` (default 24 h) while it lasts, and afresh once it cleared and came back
(:func:`clear_resolved`). See docs/alerts.md.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from include.backup.settings import airflow_home

log = logging.getLogger(__name__)

DEFAULT_WINDOW = timedelta(hours=24)
STATE_FILE_NAME = "backup-alerts-state.json"
STATE_ENV_VAR = "BACKUP_ALERTS_STATE_DIR"
FROM_ENV_VAR = "BACKUP_ALERTS_FROM"
# Keys not mailed for this long are forgotten, so the state file stays small.
STATE_TTL = timedelta(days=30)


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class AlertKind(StrEnum):
    BACKUP_FAILED = "BACKUP_FAILED"
    BACKUP_LATE = "BACKUP_LATE"
    BACKUP_SLOW = "BACKUP_SLOW"
    RPO_MISSED = "RPO_MISSED"
    RTO_MISSED = "RTO_MISSED"
    DR_TEST_OVERDUE = "DR_TEST_OVERDUE"
    KEY_ROTATION_DUE = "KEY_ROTATION_DUE"
    STORAGE_LOW = "STORAGE_LOW"
    TARGET_UNREACHABLE = "TARGET_UNREACHABLE"
    DR_ACTIVATED = "DR_ACTIVATED"
    FAILOVER_RECOMMENDED = "FAILOVER_RECOMMENDED"
    DR_TEST_RESULT = "DR_TEST_RESULT"
    REQUEST_REFUSED = "REQUEST_REFUSED"


SEVERITY: dict[AlertKind, Severity] = {
    AlertKind.BACKUP_FAILED: Severity.CRITICAL,
    AlertKind.BACKUP_LATE: Severity.WARNING,
    AlertKind.BACKUP_SLOW: Severity.WARNING,
    AlertKind.RPO_MISSED: Severity.CRITICAL,
    AlertKind.RTO_MISSED: Severity.CRITICAL,
    AlertKind.DR_TEST_OVERDUE: Severity.WARNING,
    AlertKind.KEY_ROTATION_DUE: Severity.WARNING,
    AlertKind.STORAGE_LOW: Severity.WARNING,
    AlertKind.TARGET_UNREACHABLE: Severity.CRITICAL,
    AlertKind.DR_ACTIVATED: Severity.CRITICAL,
    AlertKind.FAILOVER_RECOMMENDED: Severity.CRITICAL,
    AlertKind.DR_TEST_RESULT: Severity.INFO,
    # A restore, DR test or failover refused before it touched anything: the requester's
    # to fix, not a backup failure (alerts/callbacks.py on_refusal).
    AlertKind.REQUEST_REFUSED: Severity.INFO,
}

# What on-call should do next, per kind (shown when the alert gives no action of its own).
NEXT_STEPS: dict[AlertKind, str] = {
    AlertKind.BACKUP_FAILED: (
        "Open the run's failed task log, fix the cause (connection, disk, source), then clear "
        "the task to retry. The last good backup is untouched."
    ),
    AlertKind.BACKUP_LATE: (
        "Check that the backup DAG is unpaused, that the scheduler and workers are running, and "
        "whether a run is stuck; trigger a run by hand if needed."
    ),
    AlertKind.BACKUP_SLOW: (
        "Open the running backup DAG run and its current task log: a source or target that "
        "became slow, a lock the dump waits on, a full or slow staging disk. The backup is "
        "still running; it is not a failure yet, but the next run waits for it."
    ),
    AlertKind.RPO_MISSED: (
        "Data written since the last good backup is at risk. Trigger a backup of this source "
        "now and check why scheduled runs did not produce a verified backup."
    ),
    AlertKind.RTO_MISSED: (
        "The restore or failover is taking longer than the recovery time objective. Check the "
        "run's progress, inform stakeholders, and consider restoring from another target."
    ),
    AlertKind.DR_TEST_OVERDUE: (
        "Schedule a DR test: trigger the dr_test DAG (e.g. test_type RESTORE_TEST) for this "
        "source against a staging environment."
    ),
    AlertKind.KEY_ROTATION_DUE: (
        "Rotate the backup encryption key: add a new key id to the keys connection and make it "
        "active; keep the old key, existing backups need it (docs/keys.md)."
    ),
    AlertKind.STORAGE_LOW: (
        "Free space at the target or grow the volume; check retention settings. Backups fail "
        "when the target is full."
    ),
    AlertKind.TARGET_UNREACHABLE: (
        "Check the target's connection, credentials and network path. Backups to this target "
        "fail until it is reachable; other targets still hold copies."
    ),
    AlertKind.DR_ACTIVATED: (
        "Failover is in progress or done: follow the DR runbook, verify the application on the "
        "secondary, and keep stakeholders informed."
    ),
    AlertKind.FAILOVER_RECOMMENDED: (
        "The primary failed every recent check (dr_monitor). Confirm it is really down, then "
        "trigger the failover with the command in this mail; dr.auto_failover: true would have "
        "done it without a human."
    ),
    AlertKind.DR_TEST_RESULT: "Read the DR test report; file follow-ups for any issue it lists.",
    AlertKind.REQUEST_REFUSED: (
        "Nothing was touched and no backup is affected. Fix what the reason names (a param, "
        "the confirmation) and trigger the run again; the failed task's XCom 'refusal' holds "
        "the same reason for automation."
    ),
}

TITLES: dict[AlertKind, str] = {
    AlertKind.BACKUP_FAILED: "Backup failed",
    AlertKind.BACKUP_LATE: "Backup late",
    AlertKind.BACKUP_SLOW: "Backup slow",
    AlertKind.RPO_MISSED: "RPO missed",
    AlertKind.RTO_MISSED: "RTO missed",
    AlertKind.DR_TEST_OVERDUE: "DR test overdue",
    AlertKind.KEY_ROTATION_DUE: "Encryption key rotation due",
    AlertKind.STORAGE_LOW: "Backup storage low",
    AlertKind.TARGET_UNREACHABLE: "Backup target unreachable",
    AlertKind.DR_ACTIVATED: "DR activated",
    AlertKind.FAILOVER_RECOMMENDED: "Failover recommended",
    AlertKind.DR_TEST_RESULT: "DR test result",
    AlertKind.REQUEST_REFUSED: "Request refused",
}


@dataclass
class Alert:
    """One thing on-call must know.

    ``facts`` are short strings (names, ids, sizes, times, figures vs objectives) shown as
    a table; ``key`` identifies the violation for dedupe (default: kind + subject of the
    alert, e.g. ``RPO_MISSED:events_pg``)."""

    kind: AlertKind
    subject: str  # what it is about: a source, schedule, target, DAG run
    summary: str = ""  # one line: what happened, with the figures
    facts: dict[str, str] = field(default_factory=dict)
    severity: Severity | None = None  # default from the kind
    key: str = ""
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    action: str = ""  # overrides NEXT_STEPS[kind]
    raised_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        self.kind = AlertKind(self.kind)
        self.severity = Severity(self.severity) if self.severity else SEVERITY[self.kind]
        self.facts = {str(k): str(v) for k, v in self.facts.items()}
        if not self.key:
            self.key = f"{self.kind.value}:{self.subject}"

    @property
    def dedupe_key(self) -> str:
        return self.key

    def to_json(self) -> dict[str, Any]:
        """Metadata only (XCom, the metrics API)."""
        return {
            "kind": self.kind.value,
            "severity": self.severity.value if self.severity else None,
            "subject": self.subject,
            "summary": redact(self.summary),
            "facts": {k: redact(v) for k, v in self.facts.items()},
            "key": self.key,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "raised_at": self.raised_at.isoformat(),
            "url": run_url(self.dag_id, self.run_id, self.task_id),
        }


# --- redaction -------------------------------------------------------------------------

_URI_PASSWORD = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)(?P<secret>[^\s@/]+)(?=@)")
_NAMED_SECRET = re.compile(
    r"(?i)(?P<pre>\b[\w.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key|access[_\-]?key"
    r"|private[_\-]?key|credentials?|sas|sig|signature|auth)[\w.\-]*"
    r"[\"']?\s*[:=]\s*[\"']?)(?P<secret>[^\s\"'&,;}]+)"
)
_AUTH_HEADER = re.compile(r"(?i)(?P<pre>\b(?:bearer|basic)\s+)(?P<secret>[A-Za-z0-9+/=._\-]{8,})")
# Base64 of 32 bytes: exactly what a key-encryption key looks like in the keys connection.
_B64_KEY = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])")
MASK = "***"


def redact(text: object) -> str:
    """``text`` with anything that looks like a secret replaced by ``***``: passwords in
    URIs (``scheme://user:pass@host``), ``password=…``/``token: …`` pairs, bearer tokens,
    32-byte base64 keys, and whatever Airflow's secrets masker knows in this process."""
    s = str(text)
    s = _URI_PASSWORD.sub(lambda m: m.group("pre") + MASK, s)
    s = _AUTH_HEADER.sub(lambda m: m.group("pre") + MASK, s)
    s = _NAMED_SECRET.sub(lambda m: m.group("pre") + MASK, s)
    s = _B64_KEY.sub(MASK, s)
    # Secrets registered with Airflow's masker (connection passwords, key material loaded
    # by KeyRing.from_connection) are only known in a process that imported it; importing
    # it here would just cost seconds for a masker with nothing in it.
    airflow_log = sys.modules.get("airflow.sdk.log")
    if airflow_log is not None:
        try:
            masked = airflow_log.redact(s)
            if isinstance(masked, str):
                s = masked
        except Exception:  # noqa: BLE001 - best effort: the masker may not be configured
            log.debug("Airflow's secrets masker unavailable", exc_info=True)
    return s


# --- rendering -------------------------------------------------------------------------


def base_url() -> str | None:
    """The Airflow UI's address: ``$AIRFLOW__API__BASE_URL`` or ``[api] base_url``."""
    url = os.environ.get("AIRFLOW__API__BASE_URL")
    # Airflow's config only where Airflow is already loaded (tasks, callbacks): the CLI and
    # unit tests should not pay seconds of imports for a link.
    if not url and "airflow" in sys.modules:
        try:
            from airflow.configuration import conf  # lazy: Airflow: not loaded by the CLI and config checks

            url = conf.get("api", "base_url", fallback=None)
        except Exception:  # noqa: BLE001 - no Airflow config: no link
            url = None
    return url.rstrip("/") if url else None


def run_url(dag_id: str | None, run_id: str | None = None, task_id: str | None = None) -> str | None:
    """Link to the DAG (run, task instance) in the Airflow 3 UI, when the base URL is known."""
    base = base_url()
    if not base or not dag_id:
        return None
    url = f"{base}/dags/{quote(dag_id, safe='')}"
    if run_id:
        url += f"/runs/{quote(run_id, safe='')}"
        if task_id:
            url += f"/tasks/{quote(task_id, safe='')}"
    return url


def subject_line(alert: Alert) -> str:
    sev = alert.severity.value.upper() if alert.severity else "INFO"
    line = f"[{sev}] {TITLES[alert.kind]}: {alert.subject}"
    if alert.summary:
        line += f" — {alert.summary}"
    line = redact(" ".join(line.split()))  # one line: no header injection
    return line if len(line) <= 200 else line[:199] + "…"


def render(alert: Alert) -> tuple[str, str, str]:
    """``(subject, text body, html body)`` of the mail for ``alert``."""
    subject = subject_line(alert)
    url = run_url(alert.dag_id, alert.run_id, alert.task_id)
    facts = {k: redact(v) for k, v in alert.facts.items()}
    summary = redact(alert.summary) if alert.summary else TITLES[alert.kind]
    action = redact(alert.action or NEXT_STEPS[alert.kind])
    sev = alert.severity.value if alert.severity else "info"
    when = alert.raised_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    width = max((len(k) for k in facts), default=0)
    lines = [
        f"{TITLES[alert.kind]} ({sev}): {redact(alert.subject)}",
        "",
        summary,
        "",
        *(f"  {k.ljust(width)}  {v}" for k, v in facts.items()),
        "",
        f"What to do: {action}",
    ]
    if url:
        lines += ["", f"Open in Airflow: {url}"]
    lines += ["", f"Raised {when}. Alert key: {alert.key}", "— backup orchestrator (Airflow)"]
    text = "\n".join(lines) + "\n"

    colour = {"critical": "#b00020", "warning": "#b26a00", "info": "#1f5fa8"}.get(sev, "#333")
    rows = "".join(
        f"<tr><th align='left' style='padding:2px 12px 2px 0'>{html.escape(k)}</th>"
        f"<td style='padding:2px 0'>{html.escape(v)}</td></tr>"
        for k, v in facts.items()
    )
    link = f"<p><a href='{html.escape(url, quote=True)}'>Open in Airflow</a></p>" if url else ""
    body = (
        "<html><body style='font-family:sans-serif'>"
        f"<h2 style='color:{colour};margin:0 0 8px'>{html.escape(TITLES[alert.kind])} "
        f"({html.escape(sev)}): {html.escape(redact(alert.subject))}</h2>"
        f"<p>{html.escape(summary)}</p>"
        f"<table>{rows}</table>"
        f"<p><b>What to do:</b> {html.escape(action)}</p>"
        f"{link}"
        f"<p style='color:#666;font-size:small'>Raised {html.escape(when)}. "
        f"Alert key: {html.escape(alert.key)}</p>"
        "</body></html>"
    )
    return subject, text, body


# --- dedupe state ----------------------------------------------------------------------


def default_state_path() -> Path:
    """``$BACKUP_ALERTS_STATE_DIR/backup-alerts-state.json``, else under ``$AIRFLOW_HOME``."""
    env = os.environ.get(STATE_ENV_VAR)
    if env:
        return Path(env) / STATE_FILE_NAME

    return airflow_home() / STATE_FILE_NAME


def _resolve_state_path(state_path: str | os.PathLike[str] | None) -> Path:
    if state_path is None:
        return default_state_path()
    p = Path(state_path)
    return p / STATE_FILE_NAME if p.is_dir() else p


@contextlib.contextmanager
def _locked_state(path: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """The state (key -> {kind, first_sent, last_sent, count}) under an exclusive lock,
    written back atomically when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as lock:
        try:
            import fcntl  # lazy: POSIX only (the ImportError below)

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        state = _read_state(path)
        before = json.dumps(state, sort_keys=True)
        try:
            yield state
        finally:
            # Also after an error: a mail accepted before a later one failed stays recorded.
            if json.dumps(state, sort_keys=True) != before:
                _write_state(path, state)


def _read_state(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # A damaged state file must not stop alerts: worst case one repeated mail.
        log.warning("alert state %s unreadable (%s); starting afresh", path, exc)
        return {}
    sent = data.get("sent") if isinstance(data, dict) else None
    return {k: v for k, v in (sent or {}).items() if isinstance(v, dict)}


def _write_state(path: Path, state: Mapping[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "sent": state}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_time(value: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def sent_recently(
    key: str,
    *,
    window: timedelta = DEFAULT_WINDOW,
    now: datetime | None = None,
    state_path: str | os.PathLike[str] | None = None,
) -> bool:
    """True when ``key`` was mailed less than ``window`` ago."""
    now = now or datetime.now(UTC)
    entry = _read_state(_resolve_state_path(state_path)).get(key)
    last = _parse_time(entry.get("last_sent")) if entry else None
    return last is not None and now - last < window


def clear_resolved(
    active_keys: Iterable[str],
    kinds: Iterable[AlertKind | str],
    *,
    state_path: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Forget keys of ``kinds`` that are no longer in ``active_keys``: the violation
    cleared, so if it comes back it is mailed again at once. Returns the keys forgotten.
    The monitor calls this with the kinds it checks and the keys it found this round."""
    active = set(active_keys)
    wanted = {AlertKind(k).value for k in kinds}
    path = _resolve_state_path(state_path)
    with _locked_state(path) as state:
        gone = [k for k, v in state.items() if v.get("kind") in wanted and k not in active]
        for k in gone:
            del state[k]
    return gone


# --- sending ---------------------------------------------------------------------------


def _from_address(hook: Any, from_email: str | None) -> str | None:
    if from_email:
        return from_email
    if os.environ.get(FROM_ENV_VAR):
        return os.environ[FROM_ENV_VAR]
    if getattr(hook, "from_email", None):
        return None  # the connection's extra names it; let the hook use it
    return f"airflow-backup@{socket.getfqdn() or 'localhost'}"


def send(
    alerts: Iterable[Alert],
    to: Iterable[str],
    smtp_conn_id: str = "smtp_default",
    *,
    window: timedelta = DEFAULT_WINDOW,
    state_path: str | os.PathLike[str] | None = None,
    from_email: str | None = None,
    now: datetime | None = None,
) -> int:
    """Mail each alert (one mail per alert) to ``to`` through the SMTP connection
    ``smtp_conn_id``, skipping any whose dedupe key was mailed less than ``window`` ago.
    Returns how many mails were sent.

    The send and the state update happen under one file lock, so two processes alerting at
    once (a failure callback on two tasks of one run) mail once. A key is recorded only
    after its mail was accepted by the server; SMTP errors propagate (callers that must
    never raise, the Airflow callbacks, catch them)."""
    recipients = sorted({str(r) for r in to if str(r).strip()})
    pending = list(alerts)
    if not pending:
        return 0
    if not recipients:
        log.warning(
            "%d alert(s) not mailed: dr.notification_emails is empty (%s)",
            len(pending),
            ", ".join(a.key for a in pending),
        )
        return 0
    fixed_now = now
    now = now or datetime.now(UTC)
    path = _resolve_state_path(state_path)
    sent = 0
    with _locked_state(path) as state:
        # Forget stale entries so the file stays small.
        for k in [k for k, v in state.items() if _stale(v, now)]:
            del state[k]
        due: list[Alert] = []
        seen: set[str] = set()
        for alert in pending:
            entry = state.get(alert.key)
            last = _parse_time(entry.get("last_sent")) if entry else None
            if alert.key in seen or (last is not None and now - last < window):
                log.info("alert %s already mailed at %s; not sending again", alert.key, last)
                continue
            seen.add(alert.key)
            due.append(alert)
        if not due:
            return 0
        from airflow.providers.smtp.hooks.smtp import (
            SmtpHook,  # lazy: provider hook: loaded when the connection is used
        )

        with SmtpHook(smtp_conn_id=smtp_conn_id) as hook:
            sender = _from_address(hook, from_email)
            for alert in due:
                subject, _text, body = render(alert)
                hook.send_email_smtp(
                    to=recipients,
                    subject=subject,
                    html_content=body,
                    from_email=sender,
                    custom_headers={
                        "X-Backup-Alert-Kind": alert.kind.value,
                        "X-Backup-Alert-Severity": alert.severity.value if alert.severity else "info",
                        "X-Backup-Alert-Key": alert.key,
                    },
                )
                sent_at = (fixed_now or datetime.now(UTC)).isoformat()
                entry = state.get(alert.key) or {"first_sent": sent_at, "count": 0}
                entry.update(
                    kind=alert.kind.value,
                    last_sent=sent_at,
                    count=int(entry.get("count", 0)) + 1,
                )
                state[alert.key] = entry
                sent += 1
                log.info("alert %s mailed to %s", alert.key, ", ".join(recipients))
    return sent


def _stale(entry: Mapping[str, Any], now: datetime) -> bool:
    last = _parse_time(entry.get("last_sent"))
    return last is None or now - last > STATE_TTL
