"""Pydantic's validation errors as the config's messages: ``<key.path>: <what is wrong>;
<how to fix it>``, with the path as the user wrote it (``schedules[0] (daily).retention``),
the whole allowed range, the allowed keys or values, and a quoting hint where YAML read a
date, number or boolean instead of text. Unknown keys never echo their value (a pasted
password lands there)."""

from __future__ import annotations

import datetime
import difflib
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from include.backup.config.schema import Schedule, SourceConfig, TargetConfig

# The discriminated unions each named entry is validated against, by kind.
UNIONS: dict[str, Any] = {"target": TargetConfig, "source": SourceConfig}

NAME_RULE = (
    "letters, digits, _ . - (starting with a letter or digit, at most 100 characters)"
)


def kind_of(value: Any) -> str:
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


def show(value: Any) -> str:
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
    return f"{show(value)} is out of range; {need}"


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
    members = get_args(_unwrap(UNIONS.get(kind)))
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
    return f"{e.where.path}.type: {show(e.ctx.get('tag'))} is not a {e.kind} type; use one of {choices}"


def _on_choice(e: _Err) -> str:
    is_backup_type = e.where.owner is Schedule and e.where.key == "type"
    noun = "a backup type" if is_backup_type else "an allowed value"
    choices = _quoted_choices(e.ctx.get("expected", ""))
    return f"{e.where.path}: {show(e.value)} is not {noun}; use one of {choices}"


def _on_pattern(e: _Err) -> str:
    if e.where.key == "name":
        return f"{e.where.path}: {show(e.value)} is not a valid name; use {NAME_RULE}"
    return f"{e.where.path}: {show(e.value)} does not match {e.ctx.get('pattern')!r}; change it to match"


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
    return f"{parent}: key {show(e.value)} is not text; use a key name (quote it if it is one)"


def _on_value_error(e: _Err) -> str:
    msg = e.msg.removeprefix("Value error, ")
    if msg.startswith("value is not a valid email address"):
        reason = e.ctx.get("reason", "")
        return (
            f"{e.where.path}: {show(e.value)} is not a valid email address ({reason}); use name@domain.tld"
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
        return f"{where.path}: expected {_EXPECTED[e.type]}, got {show(e.value)}{_quote_hint(e)}"
    return f"{where.path}: {show(e.value)}: {e.msg}"


def describe_all(
    exc: ValidationError, root: Any, prefix: str, kind: str = ""
) -> list[str]:
    return [_describe(dict(e), root, prefix, kind) for e in exc.errors()]


def known_list(names: list[str], section: str) -> str:
    return (
        f"known {section}: {', '.join(names)}" if names else f"no {section} are defined"
    )
