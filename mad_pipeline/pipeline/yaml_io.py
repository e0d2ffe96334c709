"""Reading a ``mad run`` YAML strictly: a key written twice in one mapping and nesting deeper than any config needs
are refused with the file and line, where PyYAML's own loader would keep the last value or overflow the stack.

Values are read with PyYAML's safe loader (YAML 1.1); numbers it reads as text (``1e-3``, ``1_000``) are turned
into numbers by the schema (:mod:`.schema`) for the keys that take one.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import InputError

MAX_DEPTH = 32  # nested mappings / lists: a config uses 4


class ConfigYAMLError(yaml.MarkedYAMLError):
    """A YAML document that parses but that a config refuses (a repeated key, too deep)."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses repeated keys and nesting deeper than :data:`MAX_DEPTH`."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ConfigYAMLError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                      self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base loader reports it
                    continue
                if first is not None:
                    raise ConfigYAMLError(None, None, f"duplicate key {key!r} (first at line {first.line + 1})",
                                          key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """The document in ``text``; any problem is one :class:`InputError` line naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigYAMLError as e:
        raise InputError(f"{source}: line {e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{source}:{where} not valid YAML ({problem})") from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply (at most {MAX_DEPTH} levels)") from None


def load_value(text: str) -> Any:
    """One ``key=value`` override's value, read as YAML (``[0, 1]``, ``1e-3``, ``null``); text that is not valid YAML
    stays text. A repeated key or too deep nesting is one :class:`InputError` (the caller names the override)."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigYAMLError as e:
        raise InputError(e.problem) from None
    except RecursionError:
        raise InputError(f"nested deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError:
        return text


__all__ = ["MAX_DEPTH", "ConfigYAMLError", "StrictLoader", "load_value", "load_yaml"]
