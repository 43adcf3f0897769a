"""Fault points: a test hook that stops a backup step at a named place.

Tests (tests/integration/test_faults.py) and people reproducing a failure set::

    BACKUP_FAULT=<point>[:<action>][,<point>[:<action>]...]

before a step's process starts. At the named point the step then

- ``kill`` (the default): sends itself SIGKILL, like a worker lost to the OOM killer or a
  machine gone: no ``finally``, no clean-up, nothing recorded;
- ``pause``: creates ``<point>.paused`` in ``$BACKUP_FAULT_DIR`` (default: the temporary
  directory) and waits until that file is removed, so that a test can take a server away
  (or change the source) at exactly that moment, then let the step go on;
- ``raise``: raises :class:`FaultInjected`, an ordinary failure of the step.

The points are :data:`POINTS` (docs/faults.md says where each one is). The variable is
read once, when this module is first imported: with it unset, :func:`hit` is a test of an
empty dict. An unknown point or action raises at import, naming the valid ones, so a typo
never makes a fault test pass by doing nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from pathlib import Path

from include.backup.errors import BackupError

log = logging.getLogger(__name__)

POINTS = frozenset(
    {
        "dump.mid-write",  # the first bytes of dump.partial are on disk
        "dump.mid-read",  # the source partly read: files: the first file; mongo: a collection's
        # first batch (more to come); postgres logical: pg_dump's first block (its locks held)
        "dump.snapshot-taken",  # postgres logical: the dump's snapshot taken, no table locked
        "dump.done",  # the dump and its draft manifest are in staging, the step not over
        "encrypt.mid-write",  # the first bytes of payload.partial are on disk
        "encrypt.done",  # payload and draft complete, the plaintext dump removed
        "checksum.done",  # the signed manifest is in staging
        "upload.mid-write",  # inside a target's put of the payload (local: the temp file
        # written, not renamed; S3: the first part of a multipart upload sent)
        "upload.before-manifest",  # the payload is at the target, its manifest is not
        "upload.done",  # the manifest is at the target
        "verify.done",  # the verification is recorded in the target's manifest
        "cleanup.staging-removed",  # the run's staging is gone, retention not applied
        "retention.between-deletes",  # a backup's manifest deleted, its payload not yet
        "cleanup.done",  # retention and the orphan sweep are done
        "rewrap.before-manifest",  # keys retire: a re-encrypted payload put, its manifest not yet
    }
)
ACTIONS = ("kill", "pause", "raise")
PAUSE_TIMEOUT_S = 600.0  # a paused step nobody releases fails instead of hanging forever
_POLL_S = 0.05


class FaultInjected(BackupError):
    """The ``raise`` action of $BACKUP_FAULT (a test hook, never seen in production)."""


def parse(spec: str) -> dict[str, str]:
    """``"a.b:kill,c.d"`` → ``{"a.b": "kill", "c.d": "kill"}``; raises ValueError naming
    what is wrong."""
    armed: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, action = item.partition(":")
        action = action or "kill"
        if point not in POINTS:
            raise ValueError(
                f"BACKUP_FAULT names an unknown fault point {point!r}; "
                f"the points are: {', '.join(sorted(POINTS))}"
            )
        if action not in ACTIONS:
            raise ValueError(
                f"BACKUP_FAULT: unknown action {action!r} for {point}; use one of {', '.join(ACTIONS)}"
            )
        armed[point] = action
    return armed


_ARMED: dict[str, str] = parse(os.environ.get("BACKUP_FAULT", ""))


def armed(point: str) -> bool:
    """Whether ``point`` is armed in this process (lets a caller skip setting up a hook)."""
    return point in _ARMED


def pause_file(point: str) -> Path:
    """The file a ``pause`` at ``point`` creates and waits on."""
    return Path(os.environ.get("BACKUP_FAULT_DIR") or tempfile.gettempdir()) / f"{point}.paused"


def hit(point: str) -> None:
    """Act on ``point`` if $BACKUP_FAULT armed it; each point acts once per process."""
    if not _ARMED:
        return
    action = _ARMED.pop(point, None)
    if action is None:
        return
    log.warning("fault point %s reached: %s (BACKUP_FAULT)", point, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # SIGKILL is delivered asynchronously; never go on past the point
    if action == "pause":
        _pause(point)
        return
    raise FaultInjected(f"fault injected at {point} (BACKUP_FAULT)")


def _pause(point: str) -> None:
    flag = pause_file(point)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text(str(os.getpid()))
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while flag.exists():
        if time.monotonic() > deadline:
            flag.unlink(missing_ok=True)
            raise FaultInjected(f"paused at {point} for {PAUSE_TIMEOUT_S:g} s and nobody released it")
        time.sleep(_POLL_S)
