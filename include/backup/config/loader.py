"""Load the YAML backup config and validate it, one schedule at a time.

Two kinds of failure, on purpose:

* The file cannot be trusted at all (unreadable, YAML syntax, not a mapping, a bad ``dr``,
  ``encryption``, ``pipeline`` or ``staging_dir``, an unknown top-level key):
  :func:`load_config` raises :class:`ConfigError`, so every DAG file shows the import error.
* A target, source or schedule is broken: it is dropped and reported in
  ``LoadedConfig.issues``, while every valid schedule still loads, so one typo never stops
  the other backups (DESIGN.md "Config contract").

Every issue is one line, ``<key.path>: <what is wrong>; <how to fix it>``, without the file
name: the caller prefixes it (``validate`` prints ``<file>: …``, ConfigError names the file
once).

This module runs the steps; :mod:`.yaml_loader` reads the file, :mod:`.messages` words the
schema's errors, :mod:`.schedule_checks` checks each schedule and its references, and
:mod:`.checks` what spans several entries (overlapping places, warnings).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import TypeAdapter, ValidationError

from include.backup.config import yaml_loader
from include.backup.config.checks import (
    config_warnings,
    drop_broken,
    source_overlaps,
    target_overlaps,
)
from include.backup.config.messages import NAME_RULE, UNIONS, describe_all, kind_of, show
from include.backup.config.schedule_checks import Known, validate_schedules
from include.backup.config.schema import IMPLEMENTED_TARGETS, NAME_PATTERN, BackupConfig
from include.backup.errors import ConfigError
from include.backup.settings import staging_root

ENV_VAR = "BACKUP_CONFIG"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "backup_config.yaml"

# Sections validated as a whole: if one is wrong nothing else can be trusted (a bad
# staging_dir or pipeline setting would break every schedule the same way).
SETTINGS_KEYS = ("dr", "encryption", "pipeline", "staging_dir")
NAMED_SECTIONS = ("targets", "sources")

_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    kind: TypeAdapter(tp) for kind, tp in UNIONS.items()
}


@dataclass
class LoadedConfig:
    """The valid part of a config plus everything that was wrong with the rest."""

    path: Path
    config: BackupConfig  # only the valid targets, sources and schedules
    issues: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # schedule name (or "schedules[i]" when it has no usable name) -> its issues, including
    # those of a broken target or source it uses, so each one reads on its own.
    broken_schedules: dict[str, list[str]] = field(default_factory=dict)


def config_path() -> Path:
    """``$BACKUP_CONFIG`` if set, else ``include/backup_config.yaml`` of this project."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH

def _not_found(path: Path) -> str:
    return f"config file {path} not found; set {ENV_VAR} or pass a path"


def _read_document(path: Path) -> dict[str, Any]:
    """The parsed top-level mapping, or ConfigError: nothing in the file can be used then."""
    if not path.exists():
        raise ConfigError(str(path), [_not_found(path)])
    if not path.is_file():
        raise ConfigError(
            str(path),
            [
                f"{path} is not a file; point {ENV_VAR} or the path argument at a YAML file"
            ],
        )
    document = yaml_loader.parse(yaml_loader.read_text(path), str(path))
    if not isinstance(document, dict):
        # An empty file is refused too: a wrong mount would otherwise make every backup
        # DAG vanish without an error.
        got = "an empty document" if document is None else kind_of(document)
        raise ConfigError(
            str(path),
            [
                f"the top level must be a mapping with keys {', '.join(BackupConfig.model_fields)}; got {got}"
            ],
        )
    return document


# --- top-level settings ----------------------------------------------------------------


def _container_issue(raw: dict[str, Any], key: str, want: type) -> str | None:
    value = raw.get(key)
    if value is None or isinstance(value, want):
        return None
    if want is dict:
        return f"{key}: expected a mapping of {key[:-1]} name to its settings, got {kind_of(value)}"
    return f"{key}: expected a list of schedules (each starting with '- name: …'), got {kind_of(value)}"


def _validate_settings(raw: dict[str, Any], path: Path) -> BackupConfig:
    """dr, encryption, pipeline and staging_dir; raises ConfigError on any problem there."""
    allowed = list(BackupConfig.model_fields)
    issues = []
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            issues.append(
                f"{key}: unknown top-level key; {hint}allowed keys: {', '.join(allowed)}"
            )
    issues += [i for i in (_container_issue(raw, k, dict) for k in NAMED_SECTIONS) if i]
    issues += [i for i in [_container_issue(raw, "schedules", list)] if i]
    # A section left empty (every line commented out) means "all defaults".
    settings = {k: raw[k] for k in SETTINGS_KEYS if raw.get(k) is not None}
    try:
        partial = BackupConfig.model_validate(settings)
    except ValidationError as exc:
        issues += describe_all(exc, BackupConfig, "")
    if issues:
        raise ConfigError(str(path), issues)
    return partial


# --- targets and sources ---------------------------------------------------------------


def _name_issue(section: str, name: Any) -> str | None:
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
        return None
    return f"{section}.{name}: {show(name)} is not a valid name; use {NAME_RULE}"


def _implemented_issue(name: str, target: Any) -> str | None:
    if target.type in IMPLEMENTED_TARGETS:
        return None
    return (
        f"targets.{name}.type: {target.type!r} targets are not implemented in this version; "
        f"implemented: {', '.join(sorted(IMPLEMENTED_TARGETS))}"
    )


def _validate_named(
    section: str, entries: dict[Any, Any] | None, kind: str
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Each entry on its own: (valid entries by name, issues of each broken entry)."""
    valid: dict[str, Any] = {}
    broken: dict[str, list[str]] = {}
    for name, settings in (entries or {}).items():
        prefix = f"{section}.{name}"
        issues = [i for i in [_name_issue(section, name)] if i]
        try:
            model = _ADAPTERS[kind].validate_python(settings)
        except ValidationError as exc:
            issues += describe_all(exc, UNIONS[kind], prefix, kind)
        else:
            if kind == "target":
                issues += [i for i in [_implemented_issue(str(name), model)] if i]
        if issues:
            broken[str(name)] = issues
        else:
            valid[name] = model
    return valid, broken



# --- public API ------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] | None = None) -> LoadedConfig:
    """Load and validate ``path`` (default :func:`config_path`).

    Raises ConfigError when the file as a whole cannot be trusted; otherwise returns the
    valid part, with every problem of the rest in ``issues`` and ``broken_schedules``.
    """
    cfg_path = Path(path) if path is not None else config_path()
    raw = _read_document(cfg_path)
    settings = _validate_settings(raw, cfg_path)
    targets, broken_targets = _validate_named("targets", raw.get("targets"), "target")
    sources, broken_sources = _validate_named("sources", raw.get("sources"), "source")
    staging = str(staging_root(settings))
    drop_broken(sources, broken_sources, source_overlaps(sources, targets, staging))
    drop_broken(targets, broken_targets, target_overlaps(targets))
    known = Known(targets, sources, broken_targets, broken_sources)
    schedules = validate_schedules(raw.get("schedules"), known)
    config = BackupConfig(
        dr=settings.dr,
        encryption=settings.encryption,
        pipeline=settings.pipeline,
        staging_dir=settings.staging_dir,
        targets=targets,
        sources=sources,
        schedules=schedules.valid,
    )
    issues = [
        i
        for found in (*broken_targets.values(), *broken_sources.values())
        for i in found
    ]
    return LoadedConfig(
        path=cfg_path,
        config=config,
        issues=issues + schedules.issues,
        warnings=config_warnings(config, raw.get("schedules")),
        broken_schedules=schedules.broken,
    )


def load_valid_config(path: str | os.PathLike[str] | None = None) -> BackupConfig:
    """The config, only if every part of it is valid; else ConfigError listing every issue."""
    loaded = load_config(path)
    if loaded.issues:
        raise ConfigError(str(loaded.path), loaded.issues)
    return loaded.config


def _summary(loaded: LoadedConfig) -> str:
    config = loaded.config
    names = ", ".join(
        s.name + ("" if s.active else " [inactive]") for s in config.schedules
    )
    return (
        f"OK: {loaded.path}: {len(config.schedules)} schedules ({names}), "
        f"{len(config.targets)} targets, {len(config.sources)} sources"
    )


def validate_command(path: str | None) -> int:
    """The ``validate`` CLI verb: 0 if the config has no issue (warnings allowed), else 1."""
    cfg_path = Path(path) if path else config_path()
    if not cfg_path.exists():
        print(f"error: {_not_found(cfg_path)}", file=sys.stderr)
        return 1
    try:
        loaded = load_config(cfg_path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{exc.source}: {issue}", file=sys.stderr)
        return 1
    if loaded.issues:
        for issue in loaded.issues:
            print(f"{loaded.path}: {issue}", file=sys.stderr)
        _print_warnings(loaded, sys.stderr)
        broken = ", ".join(loaded.broken_schedules) or "none"
        valid = ", ".join(s.name for s in loaded.config.schedules) or "none"
        print(
            f"{loaded.path}: {len(loaded.issues)} problem(s); broken schedules: {broken}; "
            f"valid schedules: {valid}",
            file=sys.stderr,
        )
        return 1
    print(_summary(loaded))
    _print_warnings(loaded, sys.stdout)
    return 0


def _print_warnings(loaded: LoadedConfig, stream: TextIO) -> None:
    for warning in loaded.warnings:
        print(f"{loaded.path}: warning: {warning}", file=stream)
