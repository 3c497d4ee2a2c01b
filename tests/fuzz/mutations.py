"""Applying a case: mutated engine.json bytes, model files, special files, safetensors headers, run
directories."""
from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path
from typing import Any

from .jsontext import Pairs, decode_value, dumps


def _get(doc: Any, path: list) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _set(doc: Any, path: list, value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _as_pairs(doc: Any) -> Any:
    if isinstance(doc, dict):
        return Pairs((k, _as_pairs(v)) for k, v in doc.items())
    if isinstance(doc, list):
        return [_as_pairs(v) for v in doc]
    return doc


def mutate_manifest_bytes(case: dict, manifest: dict) -> bytes:
    """The mutated engine.json bytes of a "manifest" case (file-type cases: the original text)."""
    a = case["args"]
    op = case["op"]
    m = json.loads(json.dumps(manifest))
    text = dumps(m)
    if op == "set":
        _set(m, a["path"], decode_value(a["value"]))
        return dumps(m).encode()
    if op == "multi":
        for path, v in a["sets"]:
            _set(m, path, decode_value(v))
        return dumps(m).encode()
    if op == "delete":
        del _get(m, a["path"][:-1])[a["path"][-1]]
        return dumps(m).encode()
    if op == "wrap":
        v = _get(m, a["path"])
        for _ in range(a["depth"]):
            v = [v]
        _set(m, a["path"], v)
        return dumps(m).encode()
    if op == "dup":
        p = _as_pairs(m)
        parent = p
        for k in a["path"]:
            parent = dict(parent)[k]
        parent.append((a["key"], a["value"]))
        return dumps(p).encode()
    if op == "truncate":
        return text.encode()[:a["at"]]
    if op == "flip":
        b = bytearray(text.encode())
        b[a["at"]] ^= 1 << a["bit"]
        return bytes(b)
    if op == "byte":
        b = bytearray(text.encode())
        b[a["at"]] = a["value"]
        return bytes(b)
    if op == "text":
        return _text_mutation(a["how"], m, text)
    if op in ("file", "model"):
        return text.encode()
    raise ValueError(f"unknown manifest op {op}")


def _deep(m: dict, depth: int) -> bytes:
    """The manifest with an extra key holding ``depth`` nested empty lists."""
    text = dumps(m, indent=None)
    return (text[:-1] + ', "zz_deep": ' + "[" * depth + "]" * depth + "}").encode()


def _text_mutation(how: str, m: dict, text: str) -> bytes:
    b = text.encode()
    if how == "bom":
        return b"\xef\xbb\xbf" + b
    if how == "bom2":
        return b"\xef\xbb\xbf\xef\xbb\xbf" + b
    if how == "compact":
        return json.dumps(m, separators=(",", ":")).encode()
    if how == "reorder":
        def rev(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: rev(v[k]) for k in reversed(list(v))}
            return [rev(x) for x in v] if isinstance(v, list) else v
        return json.dumps(rev(m), indent=1).encode()
    if how == "crlf":
        return b.replace(b"\n", b"\r\n")
    if how == "lead_ws":
        return b" \n\t\r " + b
    if how == "trail_ws":
        return b + b"\n\n \t\r\n"
    if how == "escapes":
        text = text.replace('"cdd-engine"', '"\\u0063dd\\u002dengine"')
        return text.replace('"add"', '"\\u0061dd"').encode()
    if how == "tabs":
        return json.dumps(m, indent="\t").encode()
    if how == "indent0":
        return json.dumps(m, indent=0).encode()
    if how == "utf16":
        return text.encode("utf-16")
    if how == "latin1":
        return text.replace('"unknown"', '"unkn\xf6wn"').replace('"rd"', '"r\xf6d"').encode("latin-1")
    if how == "overlong":
        return b.replace(b'"RGB"', b'"RG\xc1\x82"', 1)
    if how == "nul":
        return b.replace(b'"NCHW"', b'"NC\x00HW"', 1)
    if how == "lone_surrogate":
        return text.replace('"NCHW"', '"NCHW\\ud800"', 1).encode()
    if how == "trail_garbage":
        return b + b"garbage"
    if how == "empty":
        return b""
    if how in ("null", "array", "string", "number"):
        return {"null": b"null", "array": b"[" + b + b"]", "string": b'"cdd-engine"', "number": b"1"}[how]
    if how == "two_docs":
        return b + b + b"\n"
    if how.startswith("deep"):
        return _deep(m, int(how[4:]))
    if how == "pad17mib":
        return b[:-1] + b" " * (17 << 20) + b[-1:]
    if how == "comment":
        return b"// engine\n" + b
    if how == "single_quotes":
        return b.replace(b'"format"', b"'format'", 1)
    if how == "trailing_comma":
        return b[:b.rindex(b"}")] + b",}"
    if how == "nan_token":
        return b.replace(b'"created": ', b'"created": NaN, "zz": ', 1)
    if how == "nan_sigma":
        return b.replace(b'"sigma": ', b'"sigma": NaN, "zz": ', 1)

    if how == "bigint_dig":
        return b.replace(b'"max_batch": ', b'"max_batch": ' + b"9" * 5000 + b", \"zz\": ", 1)
    raise ValueError(f"unknown text mutation {how}")


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def scratch_copy(src: Path, dst: Path) -> Path:
    """A copy of an engine or run directory; files are hard links (cases replace, never edit, them)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            link_or_copy(p, dst / p.name)
    return dst


def replace_file(path: Path, data: bytes) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data)


def put_special(path: Path, how: str, good: Path | None = None) -> None:
    """Put a FIFO, a link to /dev/zero, a directory, ... at ``path``."""
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "dev_zero":
        path.symlink_to("/dev/zero")
    elif how == "dev_null":
        path.symlink_to("/dev/null")
    elif how == "directory":
        path.mkdir()
    elif how == "dangling":
        path.symlink_to(path.with_name("does_not_exist"))
    elif how == "symlink_ok":
        target = path.with_name(path.name + ".real")
        shutil.copy2(good, target)
        path.symlink_to(target.name)
    elif how != "missing":
        raise ValueError(how)


def _flip_random(data: bytes, seed: int) -> bytes:
    r = random.Random(seed)
    b = bytearray(data)
    i = r.randrange(len(b))
    b[i] ^= 1 << r.randrange(8)
    return bytes(b)


def _st_split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _st_join(header: Any, body: bytes, raw_header: bytes | None = None) -> bytes:
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def _first_float_tensor(header: dict) -> str:
    """The first (by name) float32 weight of a safetensors header: a tensor every forward pass uses."""
    return sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"
                  and k.endswith("weight"))[0]


def st_header_mutation(data: bytes, hdr: str) -> bytes:
    header, body = _st_split(data)
    name = _first_float_tensor(header)
    t = header[name]
    if hdr == "len_huge":
        return struct.pack("<Q", 1 << 62) + data[8:]
    if hdr == "len_past_end":
        return struct.pack("<Q", len(data)) + data[8:]
    if hdr == "len_zero":
        return struct.pack("<Q", 0) + data[8:]
    if hdr == "json_garbage":
        raw = data[8:8 + struct.unpack("<Q", data[:8])[0]]
        return _st_join(None, body, raw[:len(raw) // 2] + b"\x00" * (len(raw) - len(raw) // 2))
    if hdr == "dtype_f16":
        t["dtype"] = "F16"
    elif hdr == "dtype_i64":
        t["dtype"] = "I64"
    elif hdr == "dtype_bogus":
        t["dtype"] = "Q7"
    elif hdr == "shape_grow":
        t["shape"] = [s * 2 for s in t["shape"]]
    elif hdr == "shape_neg":
        t["shape"] = [-1] + t["shape"][1:]
    elif hdr == "offsets_past_end":
        t["data_offsets"] = [t["data_offsets"][0], len(body) + 1024]
    elif hdr == "offsets_reversed":
        t["data_offsets"] = t["data_offsets"][::-1]
    elif hdr == "offsets_overlap":
        t["data_offsets"] = [0, t["data_offsets"][1] - t["data_offsets"][0]]
    elif hdr == "drop_tensor":
        del header[name]
    elif hdr == "extra_tensor":
        header["zz_extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    elif hdr == "metadata_nonstr":
        header["__metadata__"] = {"format": 3}
    elif hdr == "rename_tensor":
        header[name + "_x"] = header.pop(name)
    else:
        raise ValueError(hdr)
    return _st_join(header, body)


def st_weights(data: bytes, what: str) -> bytes:
    header, body = _st_split(data)
    name = _first_float_tensor(header)
    lo = header[name]["data_offsets"][0]
    value = {"nan": float("nan"), "inf": float("inf"), "big": 3e38}[what]
    b = bytearray(body)
    b[lo:lo + 4] = struct.pack("<f", value)
    return data[:len(data) - len(body)] + bytes(b)


def ov_weights(data: bytes, what: str) -> bytes:
    """model.bin: the first fp32 constant set to NaN/inf/huge (the micro model's first weights)."""
    value = {"nan": float("nan"), "inf": float("inf"), "big": 3e38}[what]
    b = bytearray(data)
    b[0:4] = struct.pack("<f", value)
    return bytes(b)


def rehash(engine: Path, names: list[str]) -> None:
    """Record the present size and SHA-256 of ``names`` in engine.json (a hostile, consistent edit)."""
    import hashlib
    m = json.loads((engine / "engine.json").read_text())
    for n in names:
        p = engine / n
        if p.is_file():
            m["files"][n] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
    replace_file(engine / "engine.json", json.dumps(m, indent=2).encode())


def apply_model_mutation(case: dict, engine: Path, fx: dict) -> dict:
    """Mutate a model file of the scratch engine; -> expectation."""
    a = case["args"]
    f = engine / a["file"]
    data = f.read_bytes()
    how = a["how"]
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        if "frac" not in a:
            n = a.get("at", 0)
        else:
            n = len(data) - 1 if a["frac"] < 0 else int(len(data) * a["frac"])
        replace_file(f, data[:n])
    elif how == "append":
        replace_file(f, data + b"\x00")
    elif how == "flip":
        replace_file(f, _flip_random(data, a["seed"]))
    elif how in ("fifo", "dev_zero", "directory", "symlink_ok"):
        keep = engine / (a["file"] + ".orig")
        link_or_copy(f, keep)
        put_special(f, how, good=keep)
        keep.unlink()
    elif how == "swap":
        other = engine / a["other"]
        od = other.read_bytes()
        replace_file(other, data)
        replace_file(f, od)
        if a["rehash"]:
            rehash(engine, [a["other"]])
    elif how == "foreign":  # another engine's weights file under this name
        replace_file(f, (Path(fx["torch"]) / "model.safetensors").read_bytes())
    elif how == "other_engine":
        replace_file(f, (Path(fx["torch_other"]) / a["file"]).read_bytes())
    elif how == "weights":
        replace_file(f, ov_weights(data, a["what"]))
    elif how == "st_weights":
        replace_file(f, st_weights(data, a["what"]))
    elif how == "st_header":
        replace_file(f, st_header_mutation(data, a["hdr"]))
    elif how == "xml_f16":
        replace_file(f, data.replace(b'element_type="f32"', b'element_type="f16"'))
    else:
        raise ValueError(how)
    if a["rehash"]:
        rehash(engine, [a["file"]])
    if how == "symlink_ok":
        return {"refuse": False, "mode": "same", "why": "a symlink to a regular file is accepted"}
    if a["rehash"] and how in ("weights", "st_weights"):  # non-finite scores must raise (judge_result)
        return {"refuse": False, "mode": "finite", "why": f"{a['what']} weight: refuse or finite scores"}
    if a["rehash"]:
        return {"refuse": False, "mode": "finite",
                "why": "a consistent hostile edit: refuse or finite scores"}
    return {"refuse": True, "mode": "same", "why": "model file differs from engine.json's record"}



def snapshot(d: Path) -> dict:
    """name -> bytes of every file under ``d`` (engines here are a few MB)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def apply_run_mutation(case: dict, run: Path) -> None:
    import hashlib
    a = case["args"]
    op = case["op"]
    cfg_path = run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if op == "config_set":
        _set(cfg, a["path"], decode_value(a["value"]))
        replace_file(cfg_path, dumps(cfg).encode())
    elif op == "config_delete":
        del _get(cfg, a["path"][:-1])[a["path"][-1]]
        replace_file(cfg_path, dumps(cfg).encode())
    elif op == "config_text":
        text = dumps(cfg)
        replace_file(cfg_path, {"bom": b"\xef\xbb\xbf" + text.encode(), "compact": json.dumps(cfg).encode(),
                            "truncate": text.encode()[:len(text) // 2],
                            "latin1": text.replace('"rd"', '"r\xf6d"').encode("latin-1"),
                            "deep100000": (text[:-1] + ', "zz": ' + "[" * 10**5 + "]" * 10**5 + "}").encode(),
                            "empty": b"", "array": b"[]"}[a["how"]])
    elif op == "scores_set":
        p = run / "train_scores.json"
        doc = json.loads(p.read_text())
        doc["threshold"] = decode_value(a["value"])
        replace_file(p, dumps(doc).encode())
    elif op == "scores_file":
        p = run / "train_scores.json"
        how = a["how"]
        if how == "delete":
            p.unlink()
        elif how == "truncate":
            replace_file(p, p.read_bytes()[:20])
        elif how == "garbage":
            replace_file(p, b"\xff\xfe garbage")
        elif how == "bom":
            replace_file(p, b"\xef\xbb\xbf" + p.read_bytes())
        elif how == "fifo":
            p.unlink()
            os.mkfifo(p)
    elif op == "tensors":
        f = run / a["file"]
        data = f.read_bytes()
        how = a["how"]
        if how == "flip":
            replace_file(f, _flip_random(data, a["seed"]))
        elif how == "truncate":
            replace_file(f, data[:len(data) // 2])
        elif how == "delete":
            f.unlink()
        elif how == "st_header":
            replace_file(f, st_header_mutation(data, a["hdr"]))
        elif how == "st_weights":
            replace_file(f, st_weights(data, a["what"]))
        elif how == "fifo":
            f.unlink()
            os.mkfifo(f)
        if a["rehash"]:
            # the form checkpoint.py records: "sha256:<hex>"
            cfg["files"][a["file"]] = "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
            replace_file(cfg_path, dumps(cfg).encode())
    elif op != "noop":
        raise ValueError(op)
