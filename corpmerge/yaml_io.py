"""Bounded YAML: reading untrusted text as plain data, and writing plain data, for recipes and lineages alike.

Reading is bounded in size (``read_text_bounded``; a recipe: ``MAX_RECIPE_BYTES``), in YAML values
after alias expansion (``MAX_NODES`` unless the caller gives its own bound), in nesting (``MAX_DEPTH``)
and in the length of every list or mapping but the named long ones (``MAX_ITEMS``); messages are one
line and quote at most a short excerpt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from corpmerge.errors import CorpmergeError, excerpt

MAX_RECIPE_BYTES = 16 * 2**20
MAX_NODES = 2_000_000
MAX_DEPTH = 64
MAX_ITEMS = 10_000


def read_text_bounded(path: Path, limit: int, what: str, too_big: str) -> str | None:
    """A UTF-8 file of at most ``limit`` bytes (never more is read), None when there is no such file; otherwise a
    one-line error naming ``path`` (``what``: the file in those messages; ``too_big``: the message past the limit)."""
    try:
        if not path.is_file():
            return None
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise CorpmergeError(f"{excerpt(str(path), 200)}: cannot read {what} ({exc.strerror})") from None
    if len(raw) > limit:
        raise CorpmergeError(f"{path}: {too_big}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CorpmergeError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save {what} as UTF-8") from None


def dump_yaml(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False, allow_unicode=True)`` through libyaml when present (~2.7× faster on a
    100k-entry lineage; the same text for recipes and lineages, though libyaml may wrap long escaped strings and
    place keys of ≥ 128 bytes differently)."""
    dumper = yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True)


RECIPE_LONG_LISTS = frozenset({("population",), ("population", "entries")})


def read_yaml(text: str, source: str, long_lists: frozenset[tuple[str, ...]] = RECIPE_LONG_LISTS, max_nodes: int | None = None, kind: str = "recipe") -> Any:
    """One YAML document as plain data, like ``yaml.safe_load`` but bounded; one-line errors naming ``source``.

    ``long_lists``: the key paths (from the top mapping) whose list may have more than ``MAX_ITEMS`` items;
    ``max_nodes``: the bound on YAML values after alias expansion (``MAX_NODES`` when None); ``kind``: what the
    messages call the document."""
    loader = (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)(text)
    try:
        return _Reader(loader, long_lists, MAX_NODES if max_nodes is None else max_nodes, kind).document()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise CorpmergeError(f"{source}: not valid YAML{where}: {excerpt(problem, 120)}") from None
    except _Refused as exc:
        mark = exc.event.start_mark
        raise CorpmergeError(f"{source}: line {mark.line + 1}, column {mark.column + 1}: {exc.reason}") from None
    finally:
        loader.dispose()


class _Refused(Exception):
    """A YAML construct a recipe may not use, at ``event``."""

    def __init__(self, event: yaml.Event, reason: str) -> None:
        super().__init__(reason)
        self.event, self.reason = event, reason


_PLAIN_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]{0,17})\Z")  # a subset of YAML 1.1 ints, read to the same value
_PLAIN_FLOAT = re.compile(r"[-+]?[0-9]{1,40}\.[0-9]{0,40}\Z")  # likewise for floats
# 1e-3, 5E-05: floats in YAML 1.2 and to every reader of a recipe, but strings to YAML 1.1 (it wants a dot)
_EXPONENT_FLOAT = re.compile(r"[-+]?(?:[0-9]{1,40}\.?[0-9]{0,40}|\.[0-9]{1,40})[eE][-+]?[0-9]{1,4}\Z")
_DEFAULT_TAGS = (None, "!", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")
_NO_KEY, _MERGE_KEY = object(), object()


class _Collection:
    """A list or mapping being read: its items so far and its size in YAML values, aliases expanded."""

    def __init__(self, event: yaml.Event, unbounded: bool, long_lists: str) -> None:
        self.event, self.unbounded, self.long_lists = event, unbounded, long_lists
        self.is_map = isinstance(event, yaml.MappingStartEvent)
        self.items: dict[Any, Any] | list[Any] = {} if self.is_map else []
        self.key: Any = _NO_KEY
        self.nodes = 1
        self.merges: list[dict[Any, Any]] = []

    def add(self, value: Any, nodes: int, event: yaml.Event, merge_key: bool) -> None:
        self.nodes += nodes
        if not self.is_map:
            self.items.append(value)
        elif self.key is _NO_KEY:
            if isinstance(value, (list, dict)):
                raise _Refused(event, "a mapping key must be a plain value, not a list or mapping")
            if not merge_key and value in self.items:
                raise _Refused(event, f"key '{excerpt(value)}' appears twice in this mapping; keep one")
            self.key = _MERGE_KEY if merge_key else value
            return
        elif self.key is _MERGE_KEY:
            sources = value if isinstance(value, list) else [value]
            if not all(isinstance(source, dict) for source in sources):
                raise _Refused(event, "a merge key (<<) needs a mapping or a list of mappings")
            self.merges.extend(sources)
            self.key = _NO_KEY
            return
        else:
            self.items[self.key] = value
            self.key = _NO_KEY
        if not self.unbounded and len(self.items) > MAX_ITEMS:
            raise _Refused(self.event, f"more than {MAX_ITEMS:,} items in one list or mapping (only {self.long_lists} may be longer)")

    def value(self) -> Any:
        if not self.merges:
            return self.items
        merged: dict[Any, Any] = {}
        for source in self.merges:  # the first merge source that has a key wins; explicit keys win over all
            for key, item in source.items():
                merged.setdefault(key, item)
        merged.update(self.items)  # keys: merged ones in order of first appearance, then the mapping's own
        return merged


class _Reader:
    """Builds plain data from parser events without recursion, counting values as if aliases were copies."""

    def __init__(self, loader: Any, long_lists: frozenset[tuple[str, ...]], max_nodes: int, kind: str) -> None:
        self.loader, self.long_lists, self.max_nodes, self.kind = loader, long_lists, max_nodes, kind
        self.long_lists_text = ", ".join(f"`{'.'.join(p)}`" for p in sorted(long_lists))
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.nodes = 0
        self.aliased = False
        resolvers = type(loader).yaml_implicit_resolvers
        # a plain scalar is a string when no implicit resolver is registered for its first character
        self.resolved_first = None if None in resolvers else frozenset(resolvers)

    def document(self) -> Any:
        self.loader.get_event()  # stream start
        if self.loader.check_event(yaml.StreamEndEvent):
            return None
        self.loader.get_event()  # document start
        data = self._node()
        self.loader.get_event()  # document end
        if not self.loader.check_event(yaml.StreamEndEvent):
            raise _Refused(self.loader.get_event(), f"a {self.kind} file holds one YAML document; remove the extra `---` documents")
        return data

    def _too_big(self, event: yaml.Event) -> _Refused:
        cause = "anchors and aliases (&, *) expand" if self.aliased else f"the {self.kind} grows"
        return _Refused(event, f"{cause} to more than {self.max_nodes:,} YAML values; a {self.kind} may not be that big")

    def _node(self) -> Any:
        stack: list[_Collection] = []
        get_event, scalar = self.loader.get_event, self._scalar
        while True:
            event = get_event()
            kind = event.__class__
            merge_key = False
            if kind is yaml.ScalarEvent:
                merge_key = event.tag is None and event.implicit[0] and event.value == "<<"
                value, nodes = (event.value if merge_key else scalar(event)), 1
                self.nodes += 1
            elif kind is yaml.SequenceStartEvent or kind is yaml.MappingStartEvent:
                if event.tag not in _DEFAULT_TAGS:
                    raise _Refused(event, f"tag '{excerpt(event.tag)}' is not supported in a {self.kind}")
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(event, f"nested more than {MAX_DEPTH} levels deep")
                self.nodes += 1  # checked at the next scalar or end: nesting is bounded
                path = tuple(c.key for c in stack) if all(c.is_map for c in stack) else None
                stack.append(_Collection(event, path in self.long_lists, self.long_lists_text))
                if event.anchor is not None:
                    self.open_anchors.add(event.anchor)
                continue
            elif kind is yaml.AliasEvent:
                if event.anchor in self.open_anchors:
                    raise _Refused(event, f"alias *{excerpt(event.anchor)} refers to a list or mapping that contains it")
                if event.anchor not in self.anchors:
                    raise _Refused(event, f"alias *{excerpt(event.anchor)} has no anchor &{excerpt(event.anchor)} before it")
                value, nodes = self.anchors[event.anchor]
                self.aliased = True
                self.nodes += nodes
            else:  # the end of a list or mapping
                done = stack.pop()
                value, nodes, event = done.value(), done.nodes, done.event
            if self.nodes > self.max_nodes:
                raise self._too_big(event)
            if kind is not yaml.AliasEvent and event.anchor is not None:
                self.anchors[event.anchor] = (value, nodes)
                self.open_anchors.discard(event.anchor)
            if not stack:
                return value
            stack[-1].add(value, nodes, event, merge_key)

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        """The scalar's value under YAML 1.1 rules, as ``yaml.safe_load`` reads it (plain numbers on a fast path), except
        that a plain number with an exponent and no dot (``1e-3``) is a float, as in YAML 1.2: a σ written so is a number."""
        value = event.value
        if event.tag is None and event.implicit[0]:
            if value and self.resolved_first is not None and value[0] not in self.resolved_first:
                return value
            if _PLAIN_INT.match(value):
                return int(value)
            if _PLAIN_FLOAT.match(value) or _EXPONENT_FLOAT.match(value):
                return float(value)
        tag = self.loader.resolve(yaml.ScalarNode, value, event.implicit) if event.tag in (None, "!") else event.tag
        construct = type(self.loader).yaml_constructors.get(tag)
        if construct is None:
            raise _Refused(event, f"tag '{excerpt(tag)}' is not supported in a {self.kind}")
        try:
            return construct(self.loader, yaml.ScalarNode(tag, value, event.start_mark, event.end_mark, event.style))
        except (ValueError, OverflowError, yaml.YAMLError) as exc:
            raise _Refused(event, f"cannot read '{excerpt(value)}' as {tag.rsplit(':', 1)[-1]}: {excerpt(str(exc), 80)}") from None
