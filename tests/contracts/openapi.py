"""Walk an OpenAPI 3 document: does it describe the paths, methods and fields an adapter
says it uses (`slurm_bridge.ApiUse`)?"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from slurm_bridge import ApiUse

HERE = Path(__file__).parent


def stored_spec(version: str) -> dict[str, Any]:
    return json.loads((HERE / f"slurmrestd-{version}.json").read_text())  # type: ignore[no-any-return]


def resolve(spec: dict[str, Any], schema: Any) -> dict[str, Any]:
    """Follow local `$ref`s (`#/components/schemas/...`) to the schema they name."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), f"only local $ref are followed, not {ref}"
        node: Any = spec
        for part in ref[2:].split("/"):
            node = node[part]
        schema = node
        seen += 1
        assert seen < 50, f"$ref loop at {ref}"
    return schema if isinstance(schema, dict) else {}


def field_problem(spec: dict[str, Any], schema: Any, dotted: str) -> str | None:
    """None if the schema has the field `a.b[].c`, else what is missing."""
    walked = []
    for part in dotted.split("."):
        name, is_array = (part[:-2], True) if part.endswith("[]") else (part, False)
        props = resolve(spec, schema).get("properties") or {}
        walked.append(part)
        if name not in props:
            return f"no property {'.'.join(walked)}"
        schema = props[name]
        if is_array:
            resolved = resolve(spec, schema)
            if resolved.get("type") != "array" or "items" not in resolved:
                return f"{'.'.join(walked)} is not an array"
            schema = resolved["items"]
    return None


def json_schema(spec: dict[str, Any], holder: dict[str, Any] | None) -> Any:
    content = (holder or {}).get("content") or {}
    return (content.get("application/json") or {}).get("schema")


def contract_problems(spec: dict[str, Any], uses: Iterable[ApiUse]) -> list[str]:
    """Everything an adapter uses that the spec does not describe (empty when it all is)."""
    problems = []
    for use in uses:
        where = f"{use.method} {use.path}"
        operation = (spec.get("paths", {}).get(use.path) or {}).get(use.method.lower())
        if operation is None:
            problems.append(f"{where}: not in the spec")
            continue
        if use.request_fields:
            body = resolve(spec, operation.get("requestBody"))
            schema = json_schema(spec, body)
            for field in use.request_fields:
                if schema is None or (problem := field_problem(spec, schema, field)):
                    problems.append(f"{where} request {field}: {problem or 'no JSON body'}")
        if use.response_fields:
            ok = (operation.get("responses") or {}).get("200")
            schema = json_schema(spec, resolve(spec, ok))
            for field in use.response_fields:
                if schema is None or (problem := field_problem(spec, schema, field)):
                    problems.append(f"{where} answer {field}: {problem or 'no JSON answer'}")
    return problems


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def trim_spec(spec: dict[str, Any], uses: Iterable[ApiUse]) -> dict[str, Any]:
    """The used paths of a spec and every schema they reach, nothing else."""
    paths: dict[str, Any] = {}
    for use in uses:
        operation = (spec.get("paths", {}).get(use.path) or {}).get(use.method.lower())
        if operation is not None:
            paths.setdefault(use.path, {})[use.method.lower()] = operation
    schemas: dict[str, Any] = {}
    pending = list(_refs(paths))
    while pending:
        ref = pending.pop()
        name = ref.rsplit("/", 1)[-1]
        if name in schemas:
            continue
        schemas[name] = spec["components"]["schemas"][name]
        pending.extend(_refs(schemas[name]))
    return {
        "openapi": spec.get("openapi"),
        "info": spec.get("info"),
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }
