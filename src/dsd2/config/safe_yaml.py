"""A user's YAML parsed safely: safe types only, no key given twice, bounded nesting and size."""

from __future__ import annotations

from typing import Any

import yaml

from dsd2.safe_read import MAX_YAML_NODES, check_size

# The node count of a user's YAML (dsd2.safe_read.check_size: "billion laughs" stays bounded).
MAX_CONFIG_NODES = MAX_YAML_NODES


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


def load_yaml_text(text: str, source: str = "the YAML text", max_nodes: int = MAX_CONFIG_NODES) -> Any:
    """Parse a user's YAML file: safe types only, no duplicate keys, bounded nesting, at most
    ``max_nodes`` values once its aliases are expanded."""
    from dsd2.safe_read import check_yaml_depth

    check_yaml_depth(text, source=source)
    data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe types only
    check_size(data, source, max_nodes)
    return data
