"""The editor schema of workflow files, with the parameters of the custom kinds installed.

``WorkflowSpec.model_json_schema()`` knows custom kinds only as a name and a ``params``
object (docs/workflow.schema.json). Where kinds are installed, ``editor_schema`` adds one
step variant per kind, its ``kind`` a constant and its ``params`` the kind's model, so an
editor completes and checks them. A parameter may hold a template, whose value is known only
when rendered, so every parameter also accepts a ``{{ }}`` string.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from processors import InstalledKind
from streams.workflow._spec import DEFAULT_TIMEOUTS, WorkflowSpec

__all__ = ["editor_schema"]

_TEMPLATE = {"type": "string", "pattern": r"\{\{", "description": "A template, rendered."}


def editor_schema(kinds: Mapping[str, InstalledKind] | None = None) -> dict[str, Any]:
    """The JSON Schema of workflow files; with ``kinds``, their params are spelled out."""
    schema = WorkflowSpec.model_json_schema(by_alias=True)
    if not kinds:
        return schema
    defs: dict[str, Any] = schema["$defs"]
    generic = defs["CustomStep"]
    generic["properties"]["kind"]["not"]["enum"] = sorted([*DEFAULT_TIMEOUTS, "custom", *kinds])
    variants = []
    for name, kind in sorted(kinds.items()):
        model = kind.processor.params_model
        params = model.model_json_schema(ref_template=f"#/$defs/{name}.{{model}}")
        for def_name, definition in params.pop("$defs", {}).items():
            defs[f"{name}.{def_name}"] = definition
        for field, field_schema in params.get("properties", {}).items():
            params["properties"][field] = {"anyOf": [field_schema, _TEMPLATE]}
        step = copy.deepcopy(generic)
        step["title"] = f"CustomStep[{name}]"
        step["description"] = kind.processor.description or f"A {name} step ({kind.origin})."
        step["properties"]["kind"] = {"const": name}
        step["properties"]["params"] = params
        step["required"] = ["kind", "params"]
        defs[f"CustomStep.{name}"] = step
        variants.append({"$ref": f"#/$defs/CustomStep.{name}"})
    (steps,) = schema["properties"]["steps"]["patternProperties"].values()
    steps["oneOf"].extend(variants)
    return schema
