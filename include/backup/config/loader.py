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
"""

from __future__ import annotations

import datetime
import difflib
import fnmatch
import os
import posixpath
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from yaml.constructor import ConstructorError

from include.backup.config.schema import (
    IMPLEMENTED_TARGETS,
    NAME_PATTERN,
    BackupConfig,
    BackupType,
    PostgresSource,
    Schedule,
    SourceConfig,
    TargetConfig,
    supported_types,
)
from include.backup.errors import ConfigError
from include.backup.settings import staging_root

ENV_VAR = "BACKUP_CONFIG"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "backup_config.yaml"

# Sections validated as a whole: if one is wrong nothing else can be trusted (a bad
# staging_dir or pipeline setting would break every schedule the same way).
SETTINGS_KEYS = ("dr", "encryption", "pipeline", "staging_dir")
NAMED_SECTIONS = ("targets", "sources")

# The discriminated unions each named entry is validated against, by kind.
_UNIONS: dict[str, Any] = {"target": TargetConfig, "source": SourceConfig}
_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    kind: TypeAdapter(tp) for kind, tp in _UNIONS.items()
}

NAME_RULE = (
    "letters, digits, _ . - (starting with a letter or digit, at most 100 characters)"
)


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


# --- reading the file ------------------------------------------------------------------


class _DuplicateKeyError(ConstructorError):
    pass


class _TooBigError(ConstructorError):
    """The document would expand (through aliases) beyond what any config needs."""


# A config with a thousand schedules is ~50,000 values and ~200 KB. The limits are far
# above that and far below what exhausts a worker: a 569-byte "billion laughs" document
# (nine anchors, each a list of nine aliases of the previous one) expands to 387 million
# values, and the validator runs at every DAG parse.
MAX_CONFIG_BYTES = 4 << 20
MAX_EXPANDED_VALUES = 1_000_000


# libyaml's parser when PyYAML was built with it: 8x faster on a config with hundreds of
# schedules, which matters because the dag processor re-reads the file on every parse.
_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeBase):  # type: ignore[misc]
    """SafeLoader that refuses duplicate keys: plain YAML keeps the last one silently, so a
    second ``targets:`` block or a repeated target name would quietly replace the first."""

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            # Merge keys (<<) may legitimately repeat what they merge in.
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_scalar(key_node)
            if key in first_line:
                raise _DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first_line[key]}); each key may "
                    "appear once in a mapping: merge the two entries or rename one",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def get_single_data(self) -> Any:
        # Composition keeps an alias as a second reference to its anchor's node, so the
        # node graph stays as small as the text; the expansion happens in construction
        # (merge keys) and in everything that walks the result (validation, repr). Weigh
        # the expanded size on the graph first and refuse a bomb before it goes off.
        node = self.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return self.construct_document(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that expands to more than MAX_EXPANDED_VALUES values, or that
    contains itself (a recursive alias). Iterative, memoized: linear in the graph's size."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # the ancestors of the node being weighed
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            total = 1 + sum(size[id(c)] for c in _children(node))
            if total > MAX_EXPANDED_VALUES:
                raise _TooBigError(
                    None,
                    None,
                    f"this value expands through aliases (*name) to more than "
                    f"{MAX_EXPANDED_VALUES:,} values, which no backup config needs (an "
                    "alias bomb, \"billion laughs\"); write the values out or use fewer "
                    "nested aliases",
                    node.start_mark,
                )
            size[key] = total
            continue
        if key in size:
            continue
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise _TooBigError(
                    None,
                    None,
                    "a recursive alias: this value contains itself through an alias "
                    "(*name inside the &name it refers to); remove the alias",
                    child.start_mark,
                )
            if id(child) not in size:
                stack.append((child, False))


def _yaml_issue(exc: yaml.YAMLError) -> str:
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return f"not valid YAML ({exc}); fix the YAML syntax"
    where = f"line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    if isinstance(exc, (_DuplicateKeyError, _TooBigError)):
        return f"{where}: {exc.problem}"
    context = f" {exc.context}" if exc.context else ""
    return (
        f"{where}: YAML syntax error: {exc.problem}{context}; fix the YAML syntax (check the "
        "indentation, and quote values that start with * & ! or contain ': ', e.g. cron: \"*/15 * * * *\")"
    )


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
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            issue = (
                f"the file is larger than {MAX_CONFIG_BYTES >> 20} MiB, far more than any "
                "backup config needs; refusing to parse it — check that the path points at "
                "the backup config"
            )
            raise ConfigError(str(path), [issue])
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issue = f"cannot read the file ({exc}); check its permissions and that it is UTF-8 text"
        raise ConfigError(str(path), [issue]) from None
    try:
        # A SafeLoader subclass: same safety as yaml.safe_load, plus duplicate-key detection.
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [_yaml_issue(exc)]) from None
    if not isinstance(document, dict):
        # An empty file is refused too: a wrong mount would otherwise make every backup
        # DAG vanish without an error.
        got = "an empty document" if document is None else _kind_of(document)
        raise ConfigError(
            str(path),
            [
                f"the top level must be a mapping with keys {', '.join(BackupConfig.model_fields)}; got {got}"
            ],
        )
    return document


# --- translating pydantic errors -------------------------------------------------------


def _kind_of(value: Any) -> str:
    """What YAML made of a value, as a user would say it: "a list", "null"."""
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return (
        "null" if value is None else names.get(type(value), f"a {type(value).__name__}")
    )


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, kept short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _num(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()  # YAML read an unquoted date
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _num(value: float) -> str:
    return (
        str(int(value))
        if isinstance(value, float) and value.is_integer()
        else str(value)
    )


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that holds the value."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged_member(tp: Any, step: Any) -> Any:
    """The union member whose ``type`` literal is ``step``: pydantic puts the discriminator
    tag into ``loc`` (targets.s3 → ('s3', 'bucket')) but it is not a key the user wrote."""
    if get_origin(tp) not in (Union, types.UnionType) or not isinstance(step, str):
        return None
    for member in get_args(tp):
        member = _unwrap(member)
        type_field = member.model_fields.get("type") if _is_model(member) else None
        annotation = type_field.annotation if type_field is not None else None
        if get_origin(annotation) is Literal and step in get_args(annotation):
            return member
    return None


def _child_type(tp: Any, step: Any) -> Any:
    if _is_model(tp):
        found = tp.model_fields.get(step)
        return found.annotation if found is not None else None
    args = get_args(tp)
    if get_origin(tp) is dict and len(args) == 2:
        return args[1]
    if get_origin(tp) in (list, tuple, set) and args:
        return args[0]
    return None


@dataclass(frozen=True)
class _Where:
    path: str  # what the user sees: schedules[0] (daily_full).retention.daily
    owner: type[BaseModel] | None  # the model that holds the last key, when known
    key: str | None


def _locate(root: Any, prefix: str, loc: tuple[Any, ...]) -> _Where:
    tp, path = root, prefix
    owner: type[BaseModel] | None = None
    key: str | None = None
    for step in loc:
        tp = _unwrap(tp)
        member = _tagged_member(tp, step)
        if member is not None:
            tp = member
            continue
        if isinstance(step, int):
            path += f"[{step}]"
        else:
            path = f"{path}.{step}" if path else str(step)
            owner, key = (tp, str(step)) if _is_model(tp) else (None, None)
        tp = _child_type(tp, step)
    return _Where(path, owner, key)


def _quoted_choices(text: str) -> str:
    """ "'a', 'b' or 'c'" (pydantic's ctx) → "a, b, c"."""
    return ", ".join(re.findall(r"'([^']*)'", text))


def _unit(key: str | None) -> str:
    if key is None:
        return ""
    for suffix in ("hours", "days", "bytes"):
        if key.endswith("_" + suffix):
            return " " + suffix
    return " bytes" if key == "chunk_size" else ""


def _bounds(where: _Where) -> tuple[float | None, float | None]:
    """Both ends of the allowed range, so the message gives the whole range even though
    pydantic only reports the end that was crossed."""
    low = high = None
    if where.owner is not None and where.key in where.owner.model_fields:
        for rule in where.owner.model_fields[where.key].metadata:
            low = getattr(rule, "ge", getattr(rule, "gt", low))
            high = getattr(rule, "le", getattr(rule, "lt", high))
    return low, high


def _range_message(value: Any, where: _Where) -> str:
    low, high = _bounds(where)
    unit = _unit(where.key)
    if low is not None and high is not None:
        need = f"must be between {_num(low)} and {_num(high)}{unit}"
    elif low is not None:
        need = f"must be at least {_num(low)}{unit}"
    else:
        need = (
            f"must be at most {_num(high)}{unit}"
            if high is not None
            else "is out of range"
        )
    return f"{_show(value)} is out of range; {need}"


_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}


def _unknown_key(where: _Where) -> str:
    # The value is never echoed: an unknown key is exactly where a pasted password lands.
    if where.owner is None:
        return "unknown key; remove it"
    allowed = list(where.owner.model_fields)
    close = difflib.get_close_matches(where.key or "", allowed, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}allowed keys: {', '.join(allowed)}"


def _missing_key(where: _Where) -> str:
    required = (
        [n for n, f in where.owner.model_fields.items() if f.is_required()]
        if where.owner
        else []
    )
    listed = f" (required here: {', '.join(required)})" if required else ""
    return f"missing required key {where.key!r}; add it{listed}"


@dataclass(frozen=True)
class _Err:
    """One pydantic error, located."""

    type: str
    where: _Where
    value: Any
    ctx: dict[str, Any]
    msg: str
    kind: str  # "target" / "source" / "": names the thing a bad ``type`` tag was meant to pick


def _union_tags(kind: str) -> str:
    members = get_args(_unwrap(_UNIONS.get(kind)))
    return ", ".join(
        get_args(m.model_fields["type"].annotation)[0] for m in members if _is_model(m)
    )


def _on_tag(e: _Err) -> str:
    # union_tag_not_found carries no list of tags in its ctx, so take them from the union.
    choices = _quoted_choices(e.ctx.get("expected_tags", "")) or _union_tags(e.kind)
    if e.type == "union_tag_not_found":
        return (
            f"{e.where.path}: missing required key 'type'; add type: one of {choices}"
        )
    return f"{e.where.path}.type: {_show(e.ctx.get('tag'))} is not a {e.kind} type; use one of {choices}"


def _on_choice(e: _Err) -> str:
    is_backup_type = e.where.owner is Schedule and e.where.key == "type"
    noun = "a backup type" if is_backup_type else "an allowed value"
    choices = _quoted_choices(e.ctx.get("expected", ""))
    return f"{e.where.path}: {_show(e.value)} is not {noun}; use one of {choices}"


def _on_pattern(e: _Err) -> str:
    if e.where.key == "name":
        return f"{e.where.path}: {_show(e.value)} is not a valid name; use {NAME_RULE}"
    return f"{e.where.path}: {_show(e.value)} does not match {e.ctx.get('pattern')!r}; change it to match"


def _on_too_short(e: _Err) -> str:
    count = e.ctx.get("min_length", 1)
    return f"{e.where.path}: must list at least {count} item{'s' if count != 1 else ''}; add one"


def _quote_hint(e: _Err) -> str:
    # YAML turns unquoted 2024-01-01, 0755 or yes into a date, number or boolean.
    if (
        e.type == "string_type"
        and e.value is not None
        and not isinstance(e.value, (dict, list, str))
    ):
        return "; put the value in quotes so YAML reads it as text"
    return ""


def _on_invalid_key(e: _Err) -> str:
    parent = e.where.path.rsplit("[", 1)[0]  # the key was taken for a list index
    return f"{parent}: key {_show(e.value)} is not text; use a key name (quote it if it is one)"


def _on_value_error(e: _Err) -> str:
    msg = e.msg.removeprefix("Value error, ")
    if msg.startswith("value is not a valid email address"):
        reason = e.ctx.get("reason", "")
        return (
            f"{e.where.path}: {_show(e.value)} is not a valid email address ({reason}); use name@domain.tld"
        )
    return f"{e.where.path}: {msg}"


_HANDLERS: dict[str, Any] = {
    "extra_forbidden": lambda e: f"{e.where.path}: {_unknown_key(e.where)}",
    "union_tag_invalid": _on_tag,
    "union_tag_not_found": _on_tag,
    "greater_than_equal": lambda e: (
        f"{e.where.path}: {_range_message(e.value, e.where)}"
    ),
    "less_than_equal": lambda e: f"{e.where.path}: {_range_message(e.value, e.where)}",
    "greater_than": lambda e: f"{e.where.path}: {_range_message(e.value, e.where)}",
    "less_than": lambda e: f"{e.where.path}: {_range_message(e.value, e.where)}",
    "enum": _on_choice,
    "literal_error": _on_choice,
    "string_pattern_mismatch": _on_pattern,
    "too_short": _on_too_short,
    "invalid_key": _on_invalid_key,
    "value_error": _on_value_error,
}


def _describe(err: dict[str, Any], root: Any, prefix: str, kind: str) -> str:
    """One pydantic error as ``<key.path>: <what>; <fix>``."""
    loc = tuple(err["loc"])
    where = _locate(root, prefix, loc)
    if err["type"] == "missing":
        # Reported on the mapping that lacks the key: that is where the user adds it.
        return f"{_locate(root, prefix, loc[:-1]).path}: {_missing_key(where)}"
    e = _Err(
        err["type"],
        where,
        err.get("input"),
        err.get("ctx") or {},
        str(err["msg"]),
        kind,
    )
    if e.type in _HANDLERS:
        return str(_HANDLERS[e.type](e))
    if e.type in _EXPECTED:
        return f"{where.path}: expected {_EXPECTED[e.type]}, got {_show(e.value)}{_quote_hint(e)}"
    return f"{where.path}: {_show(e.value)}: {e.msg}"


def _describe_all(
    exc: ValidationError, root: Any, prefix: str, kind: str = ""
) -> list[str]:
    return [_describe(dict(e), root, prefix, kind) for e in exc.errors()]


# --- top-level settings ----------------------------------------------------------------


def _container_issue(raw: dict[str, Any], key: str, want: type) -> str | None:
    value = raw.get(key)
    if value is None or isinstance(value, want):
        return None
    if want is dict:
        return f"{key}: expected a mapping of {key[:-1]} name to its settings, got {_kind_of(value)}"
    return f"{key}: expected a list of schedules (each starting with '- name: …'), got {_kind_of(value)}"


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
        issues += _describe_all(exc, BackupConfig, "")
    if issues:
        raise ConfigError(str(path), issues)
    return partial


# --- targets and sources ---------------------------------------------------------------


def _name_issue(section: str, name: Any) -> str | None:
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
        return None
    return f"{section}.{name}: {_show(name)} is not a valid name; use {NAME_RULE}"


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
            issues += _describe_all(exc, _UNIONS[kind], prefix, kind)
        else:
            if kind == "target":
                issues += [i for i in [_implemented_issue(str(name), model)] if i]
        if issues:
            broken[str(name)] = issues
        else:
            valid[name] = model
    return valid, broken


# --- where things live: no backup of itself, one place per target ---------------------


def _norm(path: str) -> str:
    # Lexical only: the config is validated at DAG parse time, where no file-system
    # look-ups happen, and the paths may not exist on this machine.
    return posixpath.normpath("/" + path.strip("/"))


def _covers(outer: str, inner: str) -> bool:
    """``inner`` is ``outer`` or below it."""
    o, i = _norm(outer), _norm(inner)
    return i == o or i.startswith(o.rstrip("/") + "/")


def _place(target: Any) -> tuple[tuple[str, ...], str, str]:
    """(the store a target writes to, its folder in that store, the key naming it)."""
    if target.type == "local":
        return ("local",), target.path, "path"
    if target.type in ("sftp", "ftp"):
        return (target.type, target.conn_id), target.path, "path"
    container = target.container if target.type == "azure_blob" else target.bucket
    return (target.type, target.conn_id, container), target.prefix, "prefix"


def _target_overlaps(targets: dict[str, Any]) -> dict[str, list[str]]:
    """A target whose folder is another's (or inside it, or around it): the two would be
    one copy, and each one's retention would delete the other's backups."""
    broken: dict[str, list[str]] = {}
    seen: list[tuple[str, tuple[str, ...], str]] = []
    for name, target in targets.items():
        store, folder, key = _place(target)
        for other, other_store, other_folder in seen:
            if store == other_store and (_covers(folder, other_folder) or _covers(other_folder, folder)):
                same = "the same place as" if _norm(folder) == _norm(other_folder) else "a place overlapping"
                broken[str(name)] = [
                    f"targets.{name}.{key}: {folder!r} is {same} target {other!r} "
                    f"({other_folder!r} on the same {'/'.join(other_store)}); two targets there "
                    "hold one copy, not two, and each one's retention deletes the other's "
                    f"backups — give targets.{name} a {key} of its own"
                ]
                break
        else:
            seen.append((str(name), store, folder))
    return broken


def _excluded_below(source: Any, root: str, inner: str) -> bool:
    """Whether the files source's excludes skip ``inner`` (or a directory above it,
    below ``root``). The same matching as sources/files.py: anchored patterns against the
    absolute path, others against the base name and the path below the root."""
    root_n, cur = _norm(root), _norm(inner)
    while cur != root_n and cur != "/":
        rel = cur[len(root_n.rstrip("/")) + 1 :]
        for raw in source.exclude:
            glob = raw.strip("/")
            if not glob:
                continue
            if raw.startswith("/"):
                hit = fnmatch.fnmatchcase(cur.lstrip("/"), glob)
            else:
                hit = fnmatch.fnmatchcase(posixpath.basename(cur), glob) or fnmatch.fnmatchcase(rel, glob)
            if hit:
                return True
        cur = posixpath.dirname(cur)
    return False


def _source_overlaps(
    sources: dict[str, Any], targets: dict[str, Any], staging: str
) -> dict[str, list[str]]:
    """A files source that would back up the staging directory (plaintext dumps of every
    backup) or a local target (every earlier backup, again in each run)."""
    broken: dict[str, list[str]] = {}
    places = [(f"the staging directory {staging}", staging, "staging_dir (or BACKUP_STAGING_DIR)")]
    places += [
        (f"local target {t!r} ({cfg.path})", cfg.path, f"targets.{t}.path")
        for t, cfg in targets.items()
        if cfg.type == "local"
    ]
    for name, source in sources.items():
        if source.type != "files":
            continue
        issues = []
        for i, path in enumerate(source.paths):
            where = f"sources.{name}.paths[{i}]"
            if _covers(staging, path) and _norm(path) != _norm(staging):
                issues.append(
                    f"{where}: {path!r} is inside the staging directory {staging}, which holds "
                    "the plaintext dumps of running backups; back up the data itself instead"
                )
                continue
            for what, inner, key in places:
                if _covers(path, inner) and not _excluded_below(source, path, inner):
                    issues.append(
                        f"{where}: {path!r} contains {what}, so the backup would back up "
                        f"itself; add {_norm(inner) + '/'!r} to sources.{name}.exclude, "
                        f"narrow the path, or move {key} elsewhere"
                    )
        if issues:
            broken[str(name)] = issues
    return broken


def _drop_broken(valid: dict[str, Any], broken: dict[str, list[str]], found: dict[str, list[str]]) -> None:
    for name, issues in found.items():
        valid.pop(name, None)
        broken.setdefault(name, []).extend(issues)


# --- schedules -------------------------------------------------------------------------


@dataclass
class _Known:
    """What a schedule may refer to, and what it may not because it is broken."""

    targets: dict[str, Any]
    sources: dict[str, Any]
    broken_targets: dict[str, list[str]]
    broken_sources: dict[str, list[str]]


def _label(index: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return (
        f"schedules[{index}] ({name})"
        if isinstance(name, str) and name
        else f"schedules[{index}]"
    )


def _known_list(names: list[str], section: str) -> str:
    return (
        f"known {section}: {', '.join(names)}" if names else f"no {section} are defined"
    )


def _source_issues(
    label: str, source: Any, known: _Known
) -> tuple[list[str], list[str]]:
    """(issues for the schedule, issues of the broken source it uses, to repeat)."""
    if not isinstance(source, str):
        return [], []
    if source in known.broken_sources:
        issue = (
            f"{label}.source: source {source!r} is invalid, so this schedule cannot run; "
            f"fix sources.{source} (see its error)"
        )
        return [issue], known.broken_sources[source]
    if source not in known.sources:
        issue = (
            f"{label}.source: unknown source {source!r}; {_known_list(sorted(known.sources), 'sources')} "
            "— define it under sources: or fix the name"
        )
        return [issue], []
    return [], []


def _target_issues(
    label: str, targets: Any, known: _Known
) -> tuple[list[str], list[str]]:
    if not isinstance(targets, list):
        return [], []
    issues: list[str] = []
    inherited: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(targets):
        if not isinstance(name, str):
            continue
        where = f"{label}.targets[{i}]"
        if name in seen:
            issues.append(
                f"{where}: target {name!r} is listed twice; list each target once"
            )
        elif name in known.broken_targets:
            issues.append(
                f"{where}: target {name!r} is invalid, so this schedule cannot run; "
                f"fix targets.{name} (see its error) or remove it from this schedule"
            )
            inherited += known.broken_targets[name]
        elif name not in known.targets:
            issues.append(
                f"{where}: unknown target {name!r}; {_known_list(sorted(known.targets), 'targets')} "
                "— define it under targets: or fix the name"
            )
        seen.add(name)
    return issues, inherited


def _type_issue(label: str, item: dict[str, Any], known: _Known) -> str | None:
    name = item.get("source")
    source = known.sources.get(name) if isinstance(name, str) else None
    if source is None:
        return None  # a missing or broken source is reported on its own
    try:
        backup_type = BackupType(item.get("type", BackupType.FULL.value))
    except (ValueError, TypeError):
        return None  # already reported by the schema
    supported = [t.value for t in BackupType if t in supported_types(source)]
    if backup_type.value in supported:
        return None
    fix = (
        f"use {' or '.join(supported)}"
        if supported
        else (
            f"no backup type is implemented for {source.type} sources yet — remove this schedule"
        )
    )
    return (
        f"{label}.type: {backup_type.value} backups of {source.type} sources are not "
        f"implemented in this version; {fix}"
    )


def _reference_issues(
    label: str, item: Any, known: _Known
) -> tuple[list[str], list[str]]:
    """Cross-references, checked from the raw item so a schedule with a schema error still
    gets every problem reported in one pass."""
    if not isinstance(item, dict):
        return [], []
    src_issues, src_inherited = _source_issues(label, item.get("source"), known)
    tgt_issues, tgt_inherited = _target_issues(label, item.get("targets"), known)
    type_issue = [i for i in [_type_issue(label, item, known)] if i]
    return src_issues + tgt_issues + type_issue, src_inherited + tgt_inherited


def _schedule_key(index: int, item: Any, taken: set[str]) -> str:
    """The name a broken schedule is filed under: its own name when it is a usable, unique
    DAG name, else its position."""
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and name not in taken:
        return name
    return f"schedules[{index}]"


def _check_schedule(
    index: int, item: Any, known: _Known
) -> tuple[Schedule | None, list[str], list[str]]:
    """(the schedule if valid, its own issues, issues of broken things it uses)."""
    label = _label(index, item)
    if not isinstance(item, dict):
        return (
            None,
            [
                f"{label}: expected a mapping (name, source, type, cron, targets, …), got {_kind_of(item)}"
            ],
            [],
        )
    issues: list[str] = []
    model: Schedule | None = None
    try:
        model = Schedule.model_validate(item)
    except ValidationError as exc:
        issues += _describe_all(exc, Schedule, label)
    ref_issues, inherited = _reference_issues(label, item, known)
    issues += ref_issues
    return (model if not issues else None), issues, inherited


@dataclass
class _ScheduleResult:
    valid: list[Schedule] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    broken: dict[str, list[str]] = field(default_factory=dict)


def _validate_schedules(items: list[Any] | None, known: _Known) -> _ScheduleResult:
    result = _ScheduleResult()
    first_index: dict[str, int] = {}
    for index, item in enumerate(items or []):
        schedule, issues, inherited = _check_schedule(index, item, known)
        name = item.get("name") if isinstance(item, dict) else None
        # The first schedule with a name keeps it (and keeps running); a later copy is
        # broken, because two DAGs cannot share an id.
        if isinstance(name, str) and name in first_index:
            issues.append(
                f"{_label(index, item)}.name: duplicate schedule name {name!r} (also schedules"
                f"[{first_index[name]}]); give each schedule a unique name"
            )
            schedule = None
        elif isinstance(name, str):
            first_index[name] = index
        if schedule is not None:
            result.valid.append(schedule)
            continue
        taken = {s.name for s in result.valid} | set(result.broken)
        result.broken[_schedule_key(index, item, taken)] = issues + inherited
        result.issues += issues
    return result


# --- warnings --------------------------------------------------------------------------


def _schedule_warnings(
    index: int, schedule: Schedule, config: BackupConfig
) -> list[str]:
    """The 3-2-1 rule: copies on at least two targets, one of them off-site."""
    label = f"schedules[{index}] ({schedule.name})"
    names = ", ".join(schedule.targets)
    warnings = []
    if len(schedule.targets) < 2:
        warnings.append(
            f"{label}.targets: only one target ({names}); the 3-2-1 rule wants copies on at "
            "least two targets — add a second target"
        )
    if not any(config.targets[t].offsite for t in schedule.targets):
        warnings.append(
            f"{label}.targets: no off-site target ({names} on-site); the 3-2-1 rule wants one "
            "copy off-site — add an s3, azure_blob, gcs, sftp or ftp target, or set "
            "offsite: true on a target that is off-site"
        )
    return warnings


def _failover_warnings(config: BackupConfig) -> list[str]:
    """dr.failover entries the failover DAG would refuse when it is needed most."""
    warnings = []
    for name, settings in config.dr.failover.items():
        source = config.sources.get(name)
        if source is None:
            warnings.append(
                f"dr.failover.{name}: no source named {name!r}; "
                f"{_known_list(sorted(config.sources), 'sources')} — fix the name or remove the entry"
            )
        elif (
            settings.switch is not None
            and settings.switch.kind == "promote_standby"
            and source.type != "postgres"
        ):
            warnings.append(
                f"dr.failover.{name}.switch: kind promote_standby promotes a PostgreSQL standby, but "
                f"source {name!r} is a {source.type} source — use kind command, airflow_variable "
                "or airflow_connection"
            )
    return warnings


def _spool_warnings(config: BackupConfig) -> list[str]:
    """WAL spool set-ups that lose segments a chain needs (docs/concurrency.md)."""
    warnings = []
    by_spool: dict[str, list[str]] = {}
    for name, source in config.sources.items():
        if not isinstance(source, PostgresSource) or source.method != "physical":
            continue
        spool = source.wal_archive_dir or ""
        by_spool.setdefault(spool, []).append(name)
        types = {s.type for s in config.schedules if s.source == name and s.active}
        if source.prune_wal_archive and {BackupType.INCREMENTAL, BackupType.TRANSACTION_LOG} <= types:
            warnings.append(
                f"sources.{name}.prune_wal_archive: its TRANSACTION_LOG schedule prunes WAL its "
                "INCREMENTAL schedule still needs (every segment since the base) — set "
                "prune_wal_archive: false or keep only one of the two schedule types"
            )
    for spool, names in sorted(by_spool.items()):
        if len(names) > 1:
            warnings.append(
                f"sources.{names[1]}.wal_archive_dir: {spool} is also the spool of "
                f"{', '.join(names[:1] + names[2:])}; one source's pruning deletes segments the other's "
                "chain needs — give each physical source its own archive directory"
            )
    return warnings


def _warnings(config: BackupConfig, items: list[Any] | None) -> list[str]:
    warnings: list[str] = []
    if not config.dr.notification_emails:
        warnings.append(
            "dr.notification_emails: empty; backup failures and RPO/RTO misses will not be "
            "emailed — add at least one address"
        )
    if not items:
        warnings.append(
            "schedules: none defined; no backup DAG will be generated — add a schedule"
        )
    warnings += _failover_warnings(config) + _spool_warnings(config)
    # Walk the file's items so each warning names the position the user can find; a valid
    # schedule is always the first item carrying its name.
    pending = {s.name: s for s in config.schedules}
    for index, item in enumerate(items or []):
        name = item.get("name") if isinstance(item, dict) else None
        schedule = pending.pop(name, None) if isinstance(name, str) else None
        if schedule is not None:
            warnings += _schedule_warnings(index, schedule, config)
    return warnings


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
    _drop_broken(sources, broken_sources, _source_overlaps(sources, targets, staging))
    _drop_broken(targets, broken_targets, _target_overlaps(targets))
    known = _Known(targets, sources, broken_targets, broken_sources)
    schedules = _validate_schedules(raw.get("schedules"), known)
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
        warnings=_warnings(config, raw.get("schedules")),
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
