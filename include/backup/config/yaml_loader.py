"""The bounded, safe YAML reader of the backup config.

``yaml.safe_load`` plus what a file read at every DAG parse needs: duplicate keys refused
(plain YAML keeps the last one silently), a size limit, and an alias budget that refuses an
alias bomb before it expands. Problems come back as one line with the line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from include.backup.errors import ConfigError


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


def yaml_issue(exc: yaml.YAMLError) -> str:
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


def read_text(path: Path) -> str:
    """The file's text, at most MAX_CONFIG_BYTES of UTF-8; ConfigError otherwise."""
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
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        issue = f"cannot read the file ({exc}); check its permissions and that it is UTF-8 text"
        raise ConfigError(str(path), [issue]) from None


def parse(text: str, source: str) -> Any:
    """The YAML document in ``text``; ConfigError naming ``source`` when it is not valid."""
    try:
        # A SafeLoader subclass: same safety as yaml.safe_load, plus duplicate-key detection.
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(source, [yaml_issue(exc)]) from None
