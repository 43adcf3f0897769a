"""The hook point for an audit trail of key changes.

Every key operation that changes something (a rotation, a backup re-wrapped, a key
deleted) calls :func:`key_event` once, with ids and names only, never key material. Today
it only logs; an audit trail (a table, a signed log at the targets) replaces the body.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def key_event(event: str, **details: Any) -> None:
    """Record a key change: ``event`` is ``rotated``, ``rewrapped`` or ``deleted``;
    ``details`` name key ids, stores, targets and backups (never a key's value)."""
    log.info("key event %s: %s", event, ", ".join(f"{k}={v}" for k, v in sorted(details.items())))
