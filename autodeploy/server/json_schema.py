"""JSON schema -> a table of grammar nodes that the JSON automaton (json_automaton.py) walks.

    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        ──compile──▶ [Node(object, props=(("city", '"city"', 1),), required=(True,)), Node(string)]

Nodes refer to each other by index, so `$ref`s (even recursive ones) become cycles in the table.
The subset enforced: type (object, array, string, number, integer, boolean, null, or a list of
those), properties / required / additionalProperties, items / minItems / maxItems, enum, const,
anyOf, allOf of one schema, $ref into $defs / definitions, minimum 0 on numbers (no minus sign), and
the empty schema (any JSON value). Annotations (title, description, default, examples, format, ...)
are accepted and ignored. Anything else that constrains values (pattern, minLength, maximum,
oneOf, ...) raises UnsupportedSchemaError naming the keyword and where it is, because the output
could not be guaranteed to validate.

Objects emit their declared properties in declared order (optional ones may be skipped); free-form
objects (no properties) emit any keys. Output is compact JSON: the only whitespace is one optional
space after ':' and ','.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from autodeploy.errors import RequestError

INF = 1 << 30

ANNOTATIONS = {
    "title", "description", "default", "examples", "format", "$schema", "$id", "$comment", "readOnly",
    "writeOnly", "deprecated", "$defs", "definitions", "contentEncoding", "contentMediaType", "discriminator",
    "strict",
}
HANDLED = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum",
           "const", "anyOf", "allOf", "$ref", "minimum", "uniqueItems"}
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
SUPPORTED = ("type, properties, required, additionalProperties, items, minItems, maxItems, enum, const, anyOf, "
             "allOf of one schema, $ref to $defs, minimum: 0")


class UnsupportedSchemaError(RequestError):
    """The schema uses a keyword the constrained decoder cannot enforce (or is malformed)."""


@dataclass
class Node:
    kind: str  # object | array | string | number | literal | anyof | placeholder
    # object: (name, key as it appears in JSON text without its quotes, value node) per property
    props: tuple[tuple[str, str, int], ...] = ()
    required: tuple[bool, ...] = ()
    free_value: int | None = None  # object without properties: any keys, values of this node
    item: int = -1  # array
    min_items: int = 0
    max_items: int | None = None
    integer: bool = False  # number
    nonneg: bool = False  # number: no minus sign (minimum: 0)
    literals: tuple[str, ...] = ()  # literal: the JSON texts allowed
    options: tuple[int, ...] = ()  # anyof
    min_len: int = INF  # fewest characters of a complete value (filled by Grammar)
    close_cost: tuple[tuple[int, int], ...] = ()  # object: per start index (first prop, after a comma)


@dataclass
class Grammar:
    nodes: list[Node] = field(default_factory=list)
    root: int = 0
    key: str = ""  # canonical text of what was compiled (cache key)

    def add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _type_ok(value: Any, t: str) -> bool:
    return {
        "object": isinstance(value, dict), "array": isinstance(value, list), "string": isinstance(value, str),
        "boolean": isinstance(value, bool), "null": value is None,
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[t]


class _Compiler:
    def __init__(self, schema: Any):
        self.g = Grammar()
        self.doc = schema
        self.refs: dict[str, int] = {}
        self.any_id: int | None = None

    def fail(self, path: str, msg: str):
        raise UnsupportedSchemaError(f"json_schema at {path}: {msg} (supported: {SUPPORTED})")

    # ---- shared nodes ----------------------------------------------------------------------------
    def any_value(self) -> int:
        """Any JSON value: object / array of any values, string, number, true / false / null."""
        if self.any_id is None:
            self.any_id = self.g.add(Node("placeholder"))
            opts = (self.g.add(Node("object", free_value=self.any_id)), self.g.add(Node("array", item=self.any_id)),
                    self.g.add(Node("string")), self.g.add(Node("number")),
                    self.g.add(Node("literal", literals=("true", "false", "null"))))
            self.g.nodes[self.any_id] = Node("anyof", options=opts)
        return self.any_id

    # ---- schema -> node ------------------------------------------------------------------------
    def compile(self, s: Any, path: str) -> int:
        if s is True:
            return self.any_value()
        if not isinstance(s, dict):
            self.fail(path, f"a schema must be an object or true, got {json_text(s)[:40]}")
        unknown = sorted(k for k in s if k not in HANDLED and k not in ANNOTATIONS)
        if unknown:
            self.fail(path, f"'{unknown[0]}' is not supported")
        if "$ref" in s:
            if len(set(s) - ANNOTATIONS) > 1:
                self.fail(path, "$ref next to other constraints is not supported")
            return self.ref(s["$ref"], path)
        if "allOf" in s:
            subs = s["allOf"]
            if not isinstance(subs, list) or len(subs) != 1 or len(set(s) - ANNOTATIONS) > 1:
                self.fail(path, "allOf is supported only with a single schema and nothing beside it")
            return self.compile(subs[0], f"{path}.allOf[0]")
        if "anyOf" in s:
            subs = s["anyOf"]
            if not isinstance(subs, list) or not subs:
                self.fail(path, "anyOf must be a non-empty list")
            if len(set(s) - ANNOTATIONS) > 1:
                self.fail(path, "anyOf next to other constraints is not supported")
            return self.g.add(Node("anyof", options=tuple(self.compile(x, f"{path}.anyOf[{i}]")
                                                           for i, x in enumerate(subs))))
        if "enum" in s or "const" in s:
            values = s["enum"] if "enum" in s else [s["const"]]
            if not isinstance(values, list) or not values:
                self.fail(path, "enum must be a non-empty list")
            types = s.get("type")
            types = [types] if isinstance(types, str) else types
            if types:
                values = [v for v in values if any(_type_ok(v, t) for t in types if t in TYPES)]
                if not values:
                    self.fail(path, "no enum value has the schema's type")
            return self.g.add(Node("literal", literals=tuple(sorted({json_text(v) for v in values}))))
        t = s.get("type")
        if t is None:
            constraining = set(s) - ANNOTATIONS - {"uniqueItems"}
            if not constraining:
                return self.any_value()
            t = "object" if {"properties", "required", "additionalProperties"} & constraining else (
                "array" if {"items", "minItems", "maxItems"} & constraining else None)
            if t is None:
                self.fail(path, f"'{sorted(constraining)[0]}' needs a type")
        if isinstance(t, list):
            if not t or any(x not in TYPES for x in t):
                self.fail(path, f"unknown type in {t}")
            if len(t) == 1:
                return self.typed(t[0], s, path)
            return self.g.add(Node("anyof", options=tuple(self.typed(x, s, path) for x in dict.fromkeys(t))))
        if t not in TYPES:
            self.fail(path, f"unknown type {t!r}")
        return self.typed(t, s, path)

    def typed(self, t: str, s: dict, path: str) -> int:
        if t == "object":
            return self.object(s, path)
        if t == "array":
            return self.array(s, path)
        if t in ("number", "integer"):
            lo = s.get("minimum")
            if lo is not None and lo != 0:
                self.fail(path, "'minimum' other than 0 is not supported")
            return self.g.add(Node("number", integer=t == "integer", nonneg=lo == 0))
        if s.get("minimum") is not None:
            self.fail(path, f"'minimum' on a {t}")
        if t == "string":
            return self.g.add(Node("string"))
        return self.g.add(Node("literal", literals=("false", "true") if t == "boolean" else ("null",)))

    def object(self, s: dict, path: str) -> int:
        props = s.get("properties") or {}
        required = s.get("required") or []
        extra = s.get("additionalProperties", True)
        if not isinstance(props, dict) or not isinstance(required, list):
            self.fail(path, "properties must be an object and required a list")
        if not props and extra is not False:
            if required:
                self.fail(path, "required without properties is not supported")
            value = self.any_value() if extra is True else self.compile(extra, f"{path}.additionalProperties")
            return self.g.add(Node("object", free_value=value))
        names = list(props) + [r for r in required if r not in props]
        if extra is False and len(names) > len(props):
            self.fail(path, f"required property {names[len(props)]!r} is not in properties")
        nid = self.g.add(Node("placeholder"))
        out = []
        for name in names:
            sub = props[name] if name in props else (True if extra in (True, None) else extra)
            out.append((name, json_text(name)[1:-1], self.compile(sub, f"{path}.properties.{name}")))
        self.g.nodes[nid] = Node("object", props=tuple(out), required=tuple(n in required for n in names))
        return nid

    def array(self, s: dict, path: str) -> int:
        if s.get("uniqueItems") is True:
            self.fail(path, "'uniqueItems' is not supported")
        items = s.get("items", True)
        if isinstance(items, list):
            self.fail(path, "tuple-form items is not supported")
        lo, hi = s.get("minItems", 0), s.get("maxItems")
        if not isinstance(lo, int) or lo < 0 or (hi is not None and (not isinstance(hi, int) or hi < max(lo, 1))):
            self.fail(path, "minItems / maxItems must be integers with 0 <= minItems <= maxItems, maxItems >= 1")
        return self.g.add(Node("array", item=self.compile(items, f"{path}.items"), min_items=lo, max_items=hi))

    def ref(self, ref: Any, path: str) -> int:
        if ref in self.refs:
            return self.refs[ref]
        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            self.fail(path, f"$ref {ref!r}: only local '#/$defs/<name>' references are supported")
        target = (self.doc.get(parts[1]) or {}).get(parts[2]) if isinstance(self.doc, dict) else None
        if target is None:
            self.fail(path, f"$ref {ref!r} does not resolve")
        # a placeholder first: a recursive reference then points back at this node
        nid = self.refs[ref] = self.g.add(Node("placeholder"))
        body = self.compile(target, ref)
        self.g.nodes[nid] = Node("anyof", options=(body,))
        return nid


def _close_costs(g: Grammar, n: Node) -> tuple[tuple[int, int], ...]:
    """Per start index j: fewest characters to finish the object from there, for (no property
    written yet, some written): the required properties left, their commas and the closing brace."""
    k = len(n.props)
    out = [(1, 1)] * (k + 1)
    for j in range(k - 1, -1, -1):
        name, key, value = n.props[j]
        if n.required[j]:
            cost = len(key) + 3 + g.nodes[value].min_len  # "key":value
            rest_first, rest_after = out[j + 1]
            # rest_first counts no leading comma for the next required one; after this one it needs it
            out[j] = (min(INF, cost + rest_after), min(INF, 1 + cost + rest_after))
        else:
            out[j] = out[j + 1]
    return tuple(out)


def _finish(g: Grammar) -> Grammar:
    """min_len of every node (a fixpoint: nodes may be recursive), then the objects' close costs."""
    for n in g.nodes:
        n.min_len = INF
    changed = True
    while changed:
        changed = False
        for n in g.nodes:
            if n.kind == "object":
                if n.free_value is not None:
                    m = 2
                else:
                    n.close_cost = _close_costs(g, n)
                    m = 1 + n.close_cost[0][0]
            elif n.kind == "array":
                ml = g.nodes[n.item].min_len
                m = 2 if n.min_items == 0 else min(INF, 2 + n.min_items * ml + n.min_items - 1)
            elif n.kind == "string":
                m = 2
            elif n.kind == "number":
                m = 1
            elif n.kind == "literal":
                m = min(map(len, n.literals))
            else:  # anyof
                m = min(g.nodes[o].min_len for o in n.options)
            if m < n.min_len:
                n.min_len, changed = m, True
    for n in g.nodes:
        if n.kind == "object" and n.free_value is None:
            n.close_cost = _close_costs(g, n)
    return g


def compile_schema(schema: Any) -> Grammar:
    """Compile a JSON schema (dict) into a Grammar; UnsupportedSchemaError names what it cannot enforce."""
    c = _Compiler(schema)
    c.g.root = c.compile(schema, "$")
    g = _finish(c.g)
    if g.nodes[g.root].min_len >= INF:
        raise UnsupportedSchemaError("json_schema: no finite JSON value satisfies it (a required cycle)")
    g.key = json.dumps(schema, sort_keys=True)
    return g


def any_object_grammar() -> Grammar:
    """response_format json_object: any JSON object."""
    return compile_schema({"type": "object"})
