"""Bounded YAML: the one loader for every YAML document baton reads.

Workflow files (and the definitions deployed through the workflows topic), ``models.yaml``,
``policies.yaml``, ``tools.yaml``, ``access.yaml`` and the settings file are YAML. PyYAML's
``safe_load`` builds aliases as shared references, so a "billion laughs" document of a few
hundred bytes loads in a blink into a value that expands to 10**9 nodes, and the first
validator or encoder that walks it never comes back. Deep nesting breaks PyYAML's recursive
composer. So every document passes three limits while it is composed, before anything is
built, and the error names the limit and the document:

- ``MAX_YAML_BYTES`` (1 MiB): the size of the text;
- ``MAX_YAML_NODES`` (100,000): scalars, sequences and mappings once aliases are expanded
  (an alias counts the whole node it refers to, each time it is used);
- ``MAX_YAML_DEPTH`` (64, ``MAX_JSON_DEPTH``): sequences and mappings nested in each other.

An alias to a node that contains it (a cycle) is refused too. Errors in the YAML itself stay
``yaml.YAMLError``, as ``yaml.safe_load`` raises them.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from topics._errors import ConfigurationError
from topics._json import MAX_JSON_DEPTH

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "YamlLimitExceeded", "load_yaml"]

#: Bytes of YAML text, at most.
MAX_YAML_BYTES = 1 << 20
#: Nodes of a document once its aliases are expanded, at most.
MAX_YAML_NODES = 100_000
#: Sequences and mappings nested inside each other, at most.
MAX_YAML_DEPTH = MAX_JSON_DEPTH


class YamlLimitExceeded(ConfigurationError):
    """A YAML document larger, more expanded or deeper than baton reads; names the limit."""


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that weighs each node as it is composed, aliases expanded."""

    def __init__(self, text: str, origin: str) -> None:
        super().__init__(text)
        self._origin = origin
        self._depth = 0
        # id(node) -> the node's expanded size; a node being composed is not in it yet.
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node is not None and id(node) not in self._sizes:
                # Its anchor is still being composed: the node would contain itself.
                raise YamlLimitExceeded(
                    f"{self._origin}: an alias refers to a node that contains it"
                )
            return node
        nests = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        self._depth += nests
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitExceeded(
                    f"{self._origin}: nests deeper than the YAML depth limit ({MAX_YAML_DEPTH} "
                    "levels)"
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= nests
        if node is not None:
            self._sizes[id(node)] = self._size(node)
        return node

    def _size(self, node: Node) -> int:
        size = 1
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            return size
        for child in children:
            size += self._sizes[id(child)]
        if size > MAX_YAML_NODES:
            raise YamlLimitExceeded(
                f"{self._origin}: expands to more than the YAML node limit ({MAX_YAML_NODES} "
                "nodes, each alias counting the node it repeats)"
            )
        return size


def load_yaml(text: str, *, origin: str = "the YAML document") -> Any:
    """Parse one YAML document within the limits (what ``yaml.safe_load`` gives).

    Args:
        text: The YAML.
        origin: Where it came from (a file name), named in the errors.

    Raises:
        YamlLimitExceeded: The document is over a limit, or an alias makes a cycle.
        yaml.YAMLError: It is not valid YAML.
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise YamlLimitExceeded(
            f"{origin}: is {size} bytes, over the YAML size limit ({MAX_YAML_BYTES} bytes)"
        )
    loader = _BoundedLoader(text, origin)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
