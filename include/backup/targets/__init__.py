"""Storage targets: one module per kind, all behind :class:`~include.backup.targets.base.Target`.

:func:`build_target` maps a target's config (``cfg.type``) to its implementation. Each
builder imports its module inside the function, so importing this package stays cheap and
never pulls in a provider SDK (DAG files are parsed often; the CLI must work without
Airflow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from include.backup.errors import TargetError

if TYPE_CHECKING:
    from include.backup.config.schema import BackupConfig
    from include.backup.targets.base import Target


def _build_local(name: str, cfg: Any) -> Target:
    from include.backup.targets.local import LocalTarget

    return LocalTarget(name, cfg.path)


def _build_s3(name: str, cfg: Any) -> Target:
    from include.backup.targets.s3 import S3Target

    return S3Target(name, cfg.conn_id, cfg.bucket, cfg.prefix)


def _build_azure_blob(name: str, cfg: Any) -> Target:
    from include.backup.targets.azure import AzureBlobTarget

    return AzureBlobTarget(name, cfg.conn_id, cfg.container, cfg.prefix)


def _build_gcs(name: str, cfg: Any) -> Target:
    from include.backup.targets.gcs import GCSTarget

    return GCSTarget(name, cfg.conn_id, cfg.bucket, cfg.prefix)


def _build_sftp(name: str, cfg: Any) -> Target:
    from include.backup.targets.sftp import SFTPTarget

    return SFTPTarget(name, cfg.conn_id, cfg.path)


def _build_ftp(name: str, cfg: Any) -> Target:
    from include.backup.targets.ftp import FTPTarget

    return FTPTarget(name, cfg.conn_id, cfg.path)


# cfg.type -> builder. Adding a target kind is one module plus one entry here (and one
# fixture factory in tests/integration/test_target_conformance.py).
BUILDERS: dict[str, Callable[[str, Any], Target]] = {
    "local": _build_local,
    "s3": _build_s3,
    "azure_blob": _build_azure_blob,
    "gcs": _build_gcs,
    "sftp": _build_sftp,
    "ftp": _build_ftp,
}


def build_target(name: str, cfg: Any) -> Target:
    """The target named ``name`` in the config, built from its config block ``cfg``."""
    builder = BUILDERS.get(cfg.type)
    if builder is None:
        raise TargetError(
            f"target '{name}': target type '{cfg.type}' is not implemented in this version "
            f"(implemented: {', '.join(sorted(BUILDERS))}); point the schedule at another target"
        )
    return builder(name, cfg)


def build_targets(config: BackupConfig, names: Iterable[str]) -> list[Target]:
    """The targets ``names`` of ``config``, in the order given."""
    targets: list[Target] = []
    for name in names:
        cfg = config.targets.get(name)
        if cfg is None:
            known = ", ".join(sorted(config.targets)) or "none"
            raise TargetError(
                f"no target named '{name}' in the config (known: {known}); "
                "add it under targets: or fix the name"
            )
        targets.append(build_target(name, cfg))
    return targets


def check_key(target_name: str, key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise TargetError.

    Keys are '/'-separated, relative to the target root, with no empty, '.' or '..' parts:
    a key must never reach outside the root (on disk, over SFTP) nor mean two different
    objects on stores that normalise paths and stores that do not (S3 keeps 'a//b')."""
    problem = _key_problem(key, allow_partial_last=False)
    if problem:
        raise TargetError(
            f"target '{target_name}': invalid object key {key!r} ({problem}); keys are "
            "'/'-separated paths relative to the target root, e.g. 'source/backup-id/payload'"
        )
    return key


def check_prefix(target_name: str, prefix: str) -> str:
    """Like :func:`check_key` for a listing prefix: '' and a trailing '/' are allowed, and
    the last part may be the start of a name."""
    if prefix == "":
        return prefix
    problem = _key_problem(prefix, allow_partial_last=True)
    if problem:
        raise TargetError(
            f"target '{target_name}': invalid listing prefix {prefix!r} ({problem}); "
            "prefixes are '' or a key's leading part such as 'source/'"
        )
    return prefix


def _key_problem(key: str, *, allow_partial_last: bool) -> str | None:
    if not isinstance(key, str) or key == "":
        return "empty"
    if key.startswith("/"):
        return "absolute"
    if "\\" in key or "\x00" in key:
        return "contains a backslash or NUL"
    parts = key.split("/")
    last = parts[-1]
    if allow_partial_last:
        # The last part of a prefix is only matched against names ('src/2024' lists
        # 'src/2024-01-…'), so it may be empty or a fragment, just never '..'.
        parts = parts[:-1]
        if last == "..":
            return "has a '..' part"
    for part in parts:
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' part"
    return None
