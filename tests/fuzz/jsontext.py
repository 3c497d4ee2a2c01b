"""Manifest text for mutations: JSON with raw tokens (NaN, 1e400, huge integers) and duplicate keys,
and the contract's strict reading of engine.json bytes."""
from __future__ import annotations

import json
import math
from typing import Any


class Raw:
    """A JSON token written as is (NaN, 1e400, a huge integer, broken text)."""

    def __init__(self, text: str) -> None:
        self.text = text


class Pairs(list):
    """An object written from (key, value) pairs, so duplicate keys are possible."""


def dumps(v: Any, indent: int | None = 2, _level: int = 0) -> str:
    """json.dumps that also writes Raw tokens and Pairs objects."""
    pad = "" if indent is None else "\n" + " " * (indent * (_level + 1))
    end = "" if indent is None else "\n" + " " * (indent * _level)
    sep = ", " if indent is None else ","
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, (dict, Pairs)):
        items = list(v.items()) if isinstance(v, dict) else list(v)
        if not items:
            return "{}"
        body = sep.join(pad + json.dumps(k) + ": " + dumps(x, indent, _level + 1) for k, x in items)
        return "{" + body + end + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        return "[" + sep.join(pad + dumps(x, indent, _level + 1) for x in v) + end + "]"
    return json.dumps(v)


class Refused(Exception):
    """The mutated text is not a manifest a reader may accept (contract rule named in the message)."""


def strict_parse(data: bytes) -> Any:
    """The contract's reading of engine.json bytes: one leading UTF-8 BOM skipped, UTF-8 only,
    standard JSON only (no NaN/Infinity, no overflow to inf), nesting at most 64.
    Raises Refused; duplicate keys raise ValueError("duplicate") (readers must only agree)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused(f"invalid UTF-8 ({e})") from e

    def const(name: str) -> Any:
        raise ValueError("non-standard constant")  # RFC 8259 has none; the contract says nothing

    def num(s: str) -> float:
        f = float(s)
        if not math.isfinite(f):
            raise Refused(f"number {s} overflows")
        return f

    def pairs(p: list) -> dict:
        keys = [k for k, _ in p]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate")
        return dict(p)

    depth = maxd = 0
    in_str = esc = False
    for ch in text:  # nesting depth outside strings
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            maxd = max(maxd, depth)
        elif ch in "]}":
            depth -= 1
    if maxd > 64:
        raise Refused(f"nesting depth {maxd} > 64")
    try:
        return json.loads(text, parse_constant=const, parse_float=num, object_pairs_hook=pairs,
                          parse_int=lambda d: int(d) if len(d) <= 4000 else 10 ** 4000)  # just "huge"
    except json.JSONDecodeError as e:
        raise Refused(f"not JSON ({e})") from e



def encode_value(v: Any) -> Any:
    """JSON-safe encoding of a value that may hold Raw tokens (cases travel as JSON)."""
    if isinstance(v, Raw):
        return {"__raw__": v.text}
    if isinstance(v, dict):
        return {"__obj__": {k: encode_value(x) for k, x in v.items()}}
    if isinstance(v, list):
        return [encode_value(x) for x in v]
    return v


def decode_value(v: Any) -> Any:
    if isinstance(v, dict) and "__raw__" in v:
        return Raw(v["__raw__"])
    if isinstance(v, dict) and "__obj__" in v:
        return {k: decode_value(x) for k, x in v["__obj__"].items()}
    if isinstance(v, list):
        return [decode_value(x) for x in v]
    return v


def label(v: Any) -> str:
    return dumps(v, indent=None).replace(" ", "")
