"""A user's YAML parsed safely: safe types only, no key given twice, bounded nesting and size."""

from __future__ import annotations

from typing import Any

import yaml

from dsd2.errors import UserError

# A YAML alias repeated inside aliases ("billion laughs") is tiny on disk and huge once expanded
# (apply_overrides copies it): count the nodes as expanded and stop early.
MAX_CONFIG_NODES = 100_000


def check_size(data: Any, source: str, limit: int = MAX_CONFIG_NODES) -> None:
    """Refuse a parsed YAML document that expands to more than ``limit`` nodes."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise UserError(f"{source} expands to more than {limit} values (YAML aliases nested in aliases?): refused")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently: a config that says `lr` twice would train with whichever came second)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, source: str = "the YAML text") -> Any:
    """Parse a user's YAML file: safe types only, no duplicate keys, bounded nesting."""
    from dsd2.safe_read import check_yaml_depth

    check_yaml_depth(text, source=source)
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe types only
