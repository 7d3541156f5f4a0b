"""docs/api.md documents every endpoint and every field the OpenAPI schema has (issue 16)."""

from __future__ import annotations

from pathlib import Path

DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()


def _fields(schema: dict, components: dict, seen: set[str]) -> set[str]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return set()
        seen.add(name)
        schema = components[name]
    names = set(schema.get("properties", {}))
    for child in [*schema.get("properties", {}).values(), schema.get("items", {})]:
        for part in [child, *child.get("anyOf", []), child.get("items", {})]:
            if isinstance(part, dict) and "$ref" in part and "StorableJSON" not in part["$ref"]:
                names |= _fields(part, components, seen)
    return names


def test_every_endpoint_and_field_of_the_schema_is_in_docs_api_md(client):
    schema = client.get("/api/v1/openapi.json").json()
    components = schema["components"]["schemas"]
    missing = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if f"`{method.upper()} {path}`" not in DOC:
                missing.append(f"{method.upper()} {path}")
            for parameter in operation.get("parameters", []):
                if f"`{parameter['name']}`" not in DOC:
                    missing.append(f"{path}: parameter {parameter['name']}")
            bodies = [
                c["schema"]
                for c in (operation.get("requestBody") or {}).get("content", {}).values()
            ]
            bodies += [
                c["schema"]
                for r in operation.get("responses", {}).values()
                for c in r.get("content", {}).values()
            ]
            for body in bodies:
                for field in _fields(body, components, set()):
                    if f"`{field}`" not in DOC:
                        missing.append(f"{method.upper()} {path}: field {field}")
    assert missing == []
