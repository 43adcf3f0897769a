"""Exceptions. Every message says what was wrong and what to change."""

from __future__ import annotations


class BackupError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(BackupError):
    """The YAML config is invalid. ``issues`` holds one line per problem (key path: fix)."""

    def __init__(self, source: str, issues: list[str]) -> None:
        self.source = source
        self.issues = list(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"invalid backup config {source}:\n{lines}")


class IntegrityError(BackupError):
    """Stored data does not match what was written: corrupt, truncated, tampered or wrong key."""


class KeyNotFoundError(BackupError):
    """The key-encryption key a backup names is not in the key ring."""


class TargetError(BackupError):
    """A storage target failed (unreachable, refused, missing object). Names the target."""


class ObjectNotFound(TargetError, FileNotFoundError):
    """The target is reachable but does not hold the object (or backup) asked for.

    Separate from other TargetErrors so that callers can tell "not there" (look at another
    target, or the backup was deleted) from "could not ask" (retry later). Also a
    FileNotFoundError, as the Target protocol promises, so file-like callers can catch it."""


class SourceError(BackupError):
    """A source could not be dumped or restored. Names the source."""


class RestoreRefused(BackupError):
    """A restore was refused before touching anything (non-empty destination, bad params)."""
