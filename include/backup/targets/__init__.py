"""Storage targets: one module per kind, all behind :class:`~include.backup.targets.base.Target`.

:func:`build_target` maps a target's config (``cfg.type``) to its implementation;
:data:`TARGET_TYPES`, the types this version implements, is derived from that mapping.
Importing this package stays cheap and never pulls in a provider SDK (every target module
imports its provider inside functions): DAG files are parsed often, and the CLI must work
without Airflow. The key checks live in :mod:`~include.backup.targets.base` and are re-exported
here for existing importers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from include.backup.errors import TargetError
from include.backup.targets.azure import AzureBlobTarget
from include.backup.targets.base import Target, check_key, check_prefix
from include.backup.targets.ftp import FTPTarget
from include.backup.targets.gcs import GCSTarget
from include.backup.targets.local import LocalTarget
from include.backup.targets.s3 import S3Target
from include.backup.targets.sftp import SFTPTarget

if TYPE_CHECKING:
    from include.backup.config.schema import BackupConfig

__all__ = ["BUILDERS", "TARGET_TYPES", "Target", "build_target", "build_targets", "check_key", "check_prefix"]


def _build_local(name: str, cfg: Any) -> Target:
    return LocalTarget(name, cfg.path)


def _build_s3(name: str, cfg: Any) -> Target:
    return S3Target(name, cfg.conn_id, cfg.bucket, cfg.prefix, **_tier_args(cfg))


def _build_azure_blob(name: str, cfg: Any) -> Target:
    return AzureBlobTarget(name, cfg.conn_id, cfg.container, cfg.prefix, **_tier_args(cfg))


def _build_gcs(name: str, cfg: Any) -> Target:
    return GCSTarget(name, cfg.conn_id, cfg.bucket, cfg.prefix, **_tier_args(cfg))


def _tier_args(cfg: Any) -> dict[str, Any]:
    """The archive-tier settings a store's target takes (targets/tiers.py)."""
    args: dict[str, Any] = {"storage_class": getattr(cfg, "storage_class", None)}
    if getattr(cfg, "thaw_tier", None):
        args["thaw_tier"] = cfg.thaw_tier
    return args


def _build_sftp(name: str, cfg: Any) -> Target:
    return SFTPTarget(name, cfg.conn_id, cfg.path)


def _build_ftp(name: str, cfg: Any) -> Target:
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

# The target types this version implements (the config schema checks against it).
TARGET_TYPES: frozenset[str] = frozenset(BUILDERS)


def build_target(name: str, cfg: Any) -> Target:
    """The target named ``name`` in the config, built from its config block ``cfg``."""
    builder = BUILDERS.get(cfg.type)
    if builder is None:
        raise TargetError(
            f"target '{name}': target type '{cfg.type}' is not implemented in this version "
            f"(implemented: {', '.join(sorted(TARGET_TYPES))}); point the schedule at another target"
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
