"""The deterministic case list: each case is a JSON-able dict {id, target, kind, op, args[, expect]}
(targets: "ov" micro OpenVINO engine, "torch" engine, "run" directory, frame runtimes)."""
from __future__ import annotations

import json
import random
from typing import Any

from .contract import FEATURE_NAMES
from .jsontext import Raw, dumps, encode_value, label

SEED = 20261204
RUN_BACKBONE, RUN_SIZE = "efficientnet_lite0", 32  # the tiniest real RD model: ~0.1 s per build/load

NASTY = [("null", None), ("true", True), ("str", "x"), ("list", []), ("obj", {}), ("zero", 0),
         ("neg", -1), ("big", Raw("1e308")), ("nan", Raw("NaN")), ("inf", Raw("1e400")),
         ("u64", Raw(str(2 ** 64))), ("half", 0.5), ("nanstr", "NaN")]
# engine.json rewrites that keep its meaning: both readers must accept them with unchanged results
MEANING_KEPT = ("bom", "compact", "reorder", "crlf", "lead_ws", "trail_ws", "escapes", "tabs", "indent0")
INFO_PATHS = {"package_version", "created", "source_checkpoint", "build", "threshold.source",
              "threshold.statistics", "model.backbone_weights"}


def leaves(v: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(v, dict) and v:
        return [p for k, x in v.items() for p in leaves(x, path + (k,))]
    if isinstance(v, list) and v:
        return [p for i, x in enumerate(v) for p in leaves(x, path + (i,))]
    return [path]


def _informational(path: tuple) -> bool:
    s = ".".join(str(p) for p in path)
    return any(s == p or s.startswith(p + ".") for p in INFO_PATHS)


def manifest_cases(target: str, manifest: dict, rng: random.Random) -> list[dict]:
    """engine.json mutations for ``target`` ("ov" or "torch"): ids are stable strings."""
    out: list[dict] = []

    def add(name: str, op: str, **args: Any) -> None:
        out.append({"id": f"{target}/manifest/{name}", "target": target, "kind": "manifest", "op": op,
                    "args": args})

    # every leaf gets nasty values; informational leaves (not scored) fewer on the OpenVINO engine,
    # whose accepted cases cost a model compile per reader
    # Every leaf gets nasty values on the OpenVINO engine (both readers); the torch engine (Python
    # reader only, same validator) gets its own sections' leaves. Accepted cases cost a model
    # compile or build per reader, so leaves that are never scored get one value.
    torch_only = ("model", "files", "features", "backend", "precision")
    for path in leaves(manifest):
        pname = ".".join(str(p) for p in path)
        values = NASTY
        if target == "torch" and path[0] not in torch_only:
            continue
        if _informational(path):
            values = NASTY[:1]
        elif target == "ov" and path[0] in ("input", "anomaly_map", "threshold"):
            values = [nv for nv in NASTY if nv[0] not in ("zero", "neg", "half")]  # valid ones: see edges
        elif path[0] in ("features", "files"):
            values = NASTY[:1] + NASTY[5:8] if target == "ov" else NASTY[:1] + NASTY[5:7]
        elif pname in ("model.student.decoder_blocks.1", "model.student.decoder_blocks.2"):
            values = NASTY[:1] + NASTY[5:7]  # .0 gets them all
        for vname, v in values:
            add(f"set:{pname}={vname}", "set", path=list(path), value=encode_value(v))
    # range edges of the contract (both sides) and valid edits
    edges = {
        ("max_batch",): [0, 4096, 4097, 1, 2.0],
        ("image_size", 0): [31, 32, 64, 4096, 4097, 32.0], ("image_size", 1): [31, 4097],
        ("input", "mean", 0): [-1000, -1000.5, 1000.5, 0.0, 1e-300],
        ("input", "std", 1): [1e-3, 9e-4, 1e-300, 1000, 1000.5, -0.25, 0.3],
        ("anomaly_map", "sigma"): [64, 64.01, 1e9, 2.0, 0.1, 1e-300, 0.3],
        ("anomaly_map", "truncate"): [16, 16.5, 0.1, 2.0, 1e-9],
        ("anomaly_map", "eps"): [1e-12, 1e-13, 1e-3, 2e-3, 0.0],
        ("anomaly_map", "mode"): ["mul", "max", "ADD"],
        ("threshold", "value"): [0.0, -1e-9, 1e300, 123.5],
        ("format_version",): [Raw("2.0"), Raw("2e0"), Raw("-0"), 1, 3, Raw("1.5")],
        ("precision",): ["fp16", "int8", "fp64"],
        ("backend",): ["tensorrt", "openvino" if target == "torch" else "torch", "onnx"],
        ("features", 0, "shape", 0): [65537, 9], ("features", 3, "dtype"): ["float16"],
        ("features", 0, "dtype"): ["float16"], ("features", 2, "shape", 1): [33],
    }
    for path, values in edges.items():
        if target == "torch" and path[0] not in torch_only + ("image_size",):
            continue
        for v in values:
            add(f"edge:{'.'.join(map(str, path))}={label(v)}", "set", path=list(path), value=encode_value(v))
    if target == "torch":  # the rest is the same validator as on the OpenVINO engine
        for key in ("model", "files", "features", "backend"):
            add(f"delete:{key}", "delete", path=[key])
        for path in (("model", "student"), ("model", "backbone"), ("model", "student", "channels")):
            add(f"delete:{'.'.join(path)}", "delete", path=list(path))
        add("wrap:model.student.width_multx1", "wrap", path=["model", "student", "width_mult"], depth=1)
        for op in ("bom", "compact", "deep100000", "nan_token", "bigint_dig"):
            add(f"text:{op}", "text", how=op)
        size = len(dumps(manifest).encode())
        for i in range(10):
            add(f"truncate:{i}", "truncate", at=rng.randrange(1, size))
        for i in range(20):
            add(f"flip:{i}", "flip", at=rng.randrange(size), bit=rng.randrange(8))
        for how in ("fifo", "dev_zero", "directory", "symlink_ok"):
            add(f"file:{how}", "file", how=how)
        return out
    # both sigma and truncate: radius 0 and the largest radius allowed
    add("edge:radius0", "multi", sets=[[["anomaly_map", "sigma"], 0.2], [["anomaly_map", "truncate"], 1.0]])
    add("edge:radius1024", "multi", sets=[[["anomaly_map", "sigma"], 64], [["anomaly_map", "truncate"], 16]])
    add("edge:radius1025", "multi",
        sets=[[["anomaly_map", "sigma"], 64.0], [["anomaly_map", "truncate"], 16.0078125]])
    add("edge:features_both_C9", "multi",
        sets=[[["features", 0, "shape", 0], 9], [["features", 3, "shape", 0], 9]])
    add("edge:features_both_f16", "multi", sets=[[["features", i, "dtype"], "float16"] for i in range(6)])
    for key in manifest:
        add(f"delete:{key}", "delete", path=[key])
    for path in (("input", "mean"), ("anomaly_map", "sigma"), ("features", 0, "shape"),
                 ("threshold", "value"),
                 ("files", next(iter(manifest["files"])), "sha256")):
        add(f"delete:{'.'.join(map(str, path))}", "delete", path=list(path))
    for path in (("max_batch",), ("anomaly_map", "sigma"), ("input", "std"), ("image_size",)):
        for depth in (1, 3, 70):
            add(f"wrap:{'.'.join(map(str, path))}x{depth}", "wrap", path=list(path), depth=depth)
    # duplicate keys: the same value (harmless) and another value (readers must agree)
    add("dup:max_batch_same", "dup", path=[], key="max_batch", value=manifest["max_batch"])
    add("dup:sigma_other", "dup", path=["anomaly_map"], key="sigma", value=2.0)
    add("dup:format_other", "dup", path=[], key="format", value="other")
    add("dup:threshold_value_neg", "dup", path=["threshold"], key="value", value=-1.0)
    add("extra:top_key", "set", path=["zz_extra"], value=encode_value({"a": [1, 2]}))
    add("extra:am_key", "set", path=["anomaly_map", "zz_extra"], value=1)
    # file names that leave the engine directory (or are no plain name) must be refused
    names = ("../model.bin", "/etc/hostname", "sub/model.bin", "", ".", "model.bin\\..\\x", "engine.json")
    record = encode_value({"sha256": "0" * 64, "bytes": 1})
    for i, name in enumerate(names):
        add(f"files:name{i}", "set", path=["files", name], value=record)
    # text-level rewrites that keep the meaning
    for op in MEANING_KEPT:
        add(f"text:{op}", "text", how=op)
    # text-level damage
    for op in ("bom2", "utf16", "latin1", "overlong", "nul", "lone_surrogate", "trail_garbage", "empty",
               "null", "array", "string", "number", "two_docs", "deep100", "deep65", "deep64", "deep100000",
               "pad17mib", "comment", "single_quotes", "trailing_comma", "nan_token", "nan_sigma",
               "bigint_dig"):
        add(f"text:{op}", "text", how=op)
    size = len(dumps(manifest).encode())
    for i in range(24):
        add(f"truncate:{i}", "truncate", at=rng.randrange(1, size))
    for i in range(60):
        add(f"flip:{i}", "flip", at=rng.randrange(size), bit=rng.randrange(8))
    for i in range(20):
        add(f"byte:{i}", "byte", at=rng.randrange(size),
            value=rng.choice([0, 0x22, 0x5c, 0x7b, 0x7d, 0x2c, 0x30, 0x39, 0x2d, 0x65, 0x80, 0xff]))
    # two or three scored leaves changed at once, each to a nasty or an edge value
    scored = [p for p in leaves(manifest) if not _informational(p) and p[0] != "files"]
    pool = [v for _, v in NASTY] + [0.001, 1000, 64, 16, 1e-12, 4096, 32, "mul", "float16", 1.0]
    for i in range(60):
        picks = rng.sample(scored, rng.choice((2, 3)))
        add(f"combo:{i}", "multi", sets=[[list(p), encode_value(rng.choice(pool))] for p in picks])
    # what sits at engine.json
    for how in ("fifo", "dev_zero", "directory", "symlink_ok", "dangling", "missing", "dev_null"):
        add(f"file:{how}", "file", how=how)
    return out


def model_cases(target: str, rng: random.Random) -> list[dict]:
    files = ["model.onnx", "model.xml", "model.bin"] if target == "ov" else ["model.safetensors"]
    out: list[dict] = []

    def add(name: str, op: str, **args: Any) -> None:
        out.append({"id": f"{target}/model/{name}", "target": target, "kind": "model", "op": op,
                    "args": args})

    for f in files:
        for rehash in (False, True):
            tag = f"{f}{'+rehash' if rehash else ''}"
            add(f"delete:{tag}", "model", file=f, how="delete", rehash=rehash)
            add(f"empty:{tag}", "model", file=f, how="truncate", at=0, rehash=rehash)
            add(f"half:{tag}", "model", file=f, how="truncate", frac=0.5, rehash=rehash)
            add(f"minus1:{tag}", "model", file=f, how="truncate", frac=-1, rehash=rehash)
            add(f"append:{tag}", "model", file=f, how="append", rehash=rehash)
            for i in range((3 if target == "ov" else 6) if rehash else 2):
                add(f"flip{i}:{tag}", "model", file=f, how="flip", seed=rng.randrange(1 << 30), rehash=rehash)
        for how in ("fifo", "dev_zero", "directory", "symlink_ok"):
            add(f"file:{how}:{f}", "model", file=f, how=how, rehash=False)
    if target == "ov":
        add("swap:xml_bin", "model", file="model.xml", how="swap", other="model.bin", rehash=False)
        add("swap:xml_bin+rehash", "model", file="model.xml", how="swap", other="model.bin", rehash=True)
        add("swap:onnx_xml+rehash", "model", file="model.onnx", how="swap", other="model.xml", rehash=True)
        add("swap:foreign_bin+rehash", "model", file="model.bin", how="foreign", rehash=True)
        for what in ("nan", "inf", "big"):
            add(f"weights:{what}+rehash", "model", file="model.bin", how="weights", what=what, rehash=True)
        add("weights:nan", "model", file="model.bin", how="weights", what="nan", rehash=False)
        add("xml:fp16_label+rehash", "model", file="model.xml", how="xml_f16", rehash=True)
    else:
        add("swap:other_engine", "model", file="model.safetensors", how="other_engine", rehash=False)
        add("swap:other_engine+rehash", "model", file="model.safetensors", how="other_engine", rehash=True)
        for what in ("nan", "inf", "big"):
            add(f"weights:{what}+rehash", "model", file="model.safetensors", how="st_weights", what=what,
                rehash=True)
        for hdr in ST_HEADER_MUTATIONS:
            add(f"st_header:{hdr}+rehash", "model", file="model.safetensors", how="st_header", hdr=hdr,
                rehash=True)
    return out


ST_HEADER_MUTATIONS = ("len_huge", "len_past_end", "len_zero", "json_garbage", "dtype_f16", "dtype_i64",
                       "dtype_bogus", "shape_grow", "shape_neg", "offsets_past_end", "offsets_reversed",
                       "offsets_overlap", "drop_tensor", "extra_tensor", "metadata_nonstr", "rename_tensor")


def run_cases(rng: random.Random) -> list[dict]:
    """Run-directory mutations, each built with the torch backend over an existing engine."""
    out: list[dict] = []

    def add(name: str, expect: str, op: str, **args: Any) -> None:
        out.append({"id": f"run/{name}", "target": "run", "kind": "run", "op": op, "expect": expect,
                    "args": args})

    cfg = [
        (("model", "image_size"), [[0, 0], [31, 32], [4097, 32], "32"], "refuse"),
        (("model", "image_size"), [[64, 96]], "valid"),
        (("model", "normalization", "std"), [[0, 1, 1], [1e-300, 1, 1], [1e-4, 1, 1], [Raw("NaN"), 1, 1],
                                             [1001, 1, 1]], "refuse"),
        (("model", "normalization", "std"), [[0.3, 0.3, 0.3]], "valid"),
        (("model", "normalization", "mean"), [[Raw("NaN"), 0, 0], [1001, 0, 0], [0, 0]], "refuse"),
        (("model", "anomaly_map", "sigma"), [1e9, 0, -1, 64.5, Raw("NaN"), 1e-300], "refuse"),
        (("model", "anomaly_map", "sigma"), [64], "valid"),
        (("model", "anomaly_map", "mode"), ["max", None], "refuse"),
        (("model", "anomaly_map", "mode"), ["mul"], "valid"),
        (("model", "student", "channels"), [[1, 2, 3], None], "refuse"),
        (("model", "student", "width_mult"), [0, "x"], "refuse"),
        (("model", "student", "bottleneck_blocks"), [-1], "refuse"),
        (("model", "student", "decoder_blocks"), [[1], [-1, 1, 1]], "refuse"),
        (("model", "backbone"), ["resnet999", None], "refuse"),
        (("model", "teacher_weights_id"), ["sha256:0000"], "refuse"),
        (("format",), ["other"], "refuse"),
        (("format_version",), [2, True, Raw("1.5")], "refuse"),
        (("epoch",), ["x"], "either"),
        (("files", "student.safetensors"), ["0" * 64, None], "refuse"),
    ]
    for path, values, expect in cfg:
        for v in values:
            add(f"config:{'.'.join(path)}={label(v)}", expect, "config_set", path=list(path),
                value=encode_value(v))
    for key in ("model", "files", "format", "format_version"):
        add(f"config:delete:{key}", "refuse", "config_delete", path=[key])
    for how, expect in (("bom", "either"), ("compact", "same"), ("truncate", "refuse"), ("latin1", "refuse"),
                        ("deep100000", "refuse"), ("array", "refuse")):
        add(f"config:text:{how}", expect, "config_text", how=how)
    for v, expect in ((-0.5, "refuse"), (Raw("NaN"), "refuse"), (Raw("1e400"), "refuse"), ("0.5", "refuse"),
                      (True, "refuse"), (0.0, "valid")):
        add(f"scores:threshold={label(v)}", expect, "scores_set", value=encode_value(v))
    for how, expect in (("delete", "refuse"), ("garbage", "refuse"), ("bom", "either"), ("fifo", "refuse")):
        add(f"scores:file:{how}", expect, "scores_file", how=how)
    for f in ("student.safetensors", "teacher.safetensors"):
        for how in ("flip", "truncate", "delete"):
            add(f"tensors:{how}:{f}", "refuse", "tensors", file=f, how=how, rehash=False,
                seed=rng.randrange(1 << 30))
        headers = ST_HEADER_MUTATIONS if f.startswith("student") else ("len_huge", "dtype_f16", "shape_grow")
        for hdr in headers:
            add(f"tensors:st_header:{hdr}:{f}+rehash", "refuse" if hdr != "metadata_nonstr" else "either",
                "tensors", file=f, how="st_header", hdr=hdr, rehash=True)
        add(f"tensors:weights:nan:{f}+rehash", "refuse_or_nonfinite", "tensors", file=f, how="st_weights",
            what="nan", rehash=True)
        add(f"tensors:file:fifo:{f}", "refuse", "tensors", file=f, how="fifo", rehash=False)
    return out


# frames: (name, expect). "same": the result equals the canonical frames'; "refuse"; "either": the
# canonical result (within TOL) or a refusal; "valid": finite scores or a refusal, no crash.
FRAME_EXPECT = {
    "same": (
        "fortran_order", "neg_stride_w", "neg_stride_h", "padded_rows", "planar_channels", "readonly",
        "torch", "torch_permuted", "list", "tuple", "list_torch", "list_noncontig", "lowercase_rgb",
        "bgr_reversed", "batch_over_max", "broadcast_batch", "torch_expand", "mono_nhw",
        "list_mixed_sizes", "every_other_column", "return_maps_false", "single",
    ),
    "either": (
        "float32", "float64", "float16", "requires_grad", "list_mixed_dtype", "fmt_bytes",
    ),
    "refuse": (
        "int8", "int16", "uint16", "int32", "int64", "uint32", "bool", "complex64", "object", "strings",
        "float_nan", "float_inf", "float_neg", "float_256", "float_1e30", "rank0", "rank1", "rank2_rgb",
        "rank3_rgb", "rank5", "rank6", "channels0", "channels2", "channels4", "channels5", "mono_3ch",
        "n0", "h0", "w0", "empty_list", "list_none", "list_int", "nested_lists", "dict", "none", "string",
        "bytes", "list_mixed_channels", "list_nan_frame", "fmt_yuv", "fmt_empty", "fmt_none", "fmt_int",
        "fmt_rgba", "huge_broadcast", "huge_mono_row", "map_size_bogus", "meta_tensor",
    ),
    "valid": (
        "tiny_1x1", "row_1x3000", "large_3000x4000", "col_3000x1", "mono_nhw1", "map_size_input", "black",
        "white",
    ),
}
FRAME_CASES = [(name, expect) for expect, names in FRAME_EXPECT.items() for name in names]
FRAME_TARGETS = ("py-torch", "py-ov", "native", "raw")
RAW_SKIP = {"torch", "torch_permuted", "list_torch", "torch_expand", "requires_grad", "meta_tensor",
            "lowercase_rgb", "map_size_input", "map_size_bogus", "return_maps_false"}


# the module reads frames in place and refuses, with a ValueError naming the strides, layouts whose
# pixels are not packed in rows (the Python Engine copies those first): for it "either", not "same"
RAW_IN_PLACE_ONLY = {"fortran_order", "neg_stride_w", "neg_stride_h", "planar_channels", "list_noncontig",
                     "bgr_reversed", "every_other_column", "broadcast_batch", "padded_rows"}


def frame_cases() -> list[dict]:
    return [{"id": f"frames/{t}/{name}", "target": t, "kind": "frames", "op": name,
             "expect": "either" if t == "raw" and name in RAW_IN_PLACE_ONLY else expect, "args": {}}
            for t in FRAME_TARGETS for name, expect in FRAME_CASES if not (t == "raw" and name in RAW_SKIP)]


def all_cases(seed: int = SEED) -> list[dict]:
    """The deterministic case list (from the canonical manifests' structure: mutations apply to
    the fixture engines' real engine.json by path; test_fuzz checks the structures match)."""
    manifests = canonical_manifests()
    rng = random.Random(seed)
    cases = (manifest_cases("ov", manifests["ov"], rng) + manifest_cases("torch", manifests["torch"], rng)
             + model_cases("ov", rng) + model_cases("torch", rng) + run_cases(rng) + frame_cases())
    ids = [c["id"] for c in cases]
    assert len(set(ids)) == len(ids), "duplicate case ids"
    return cases


def canonical_manifests() -> dict[str, dict]:
    """The two engines' manifests as built by ``make_fixtures``, with build-time values (dates,
    hashes, timings) replaced by stand-ins: only the structure feeds the case list."""
    features = lambda shapes: [{"name": n, "shape": list(s), "dtype": "float32"}  # noqa: E731
                               for n, s in zip(FEATURE_NAMES, shapes + shapes, strict=True)]
    common = {"format": "cdd-engine", "format_version": 2, "package_version": "x", "created": "x",
              "source_checkpoint": {}, "backend": "x", "precision": "fp32", "max_batch": 4,
              "image_size": [32, 32],
              "input": {"name": "image", "layout": "NCHW", "dtype": "float32", "color": "RGB",
                        "mean": [0, 0, 0], "std": [1, 1, 1], "resize": "bilinear_antialias"},
              "features": [],
              "anomaly_map": {"mode": "add", "sigma": 4.0, "truncate": 4.0, "eps": 1e-8,
                              "upsample": "bilinear_align_corners", "blur_boundary": "reflect"},
              "threshold": {"value": 0.5, "source": "x", "statistics": {}}, "files": {}}
    ov = json.loads(json.dumps(common))
    ov.update(source_checkpoint={"path": None, "method": "unknown", "backbone": "micro"}, backend="openvino",
              features=features([(8, 8, 8), (16, 4, 4), (32, 2, 2)]),
              files={f: {"sha256": "0" * 64, "bytes": 1} for f in ("model.onnx", "model.xml", "model.bin")},
              build={"backend_choice": "asked for", "seconds": 1.0})
    th = json.loads(json.dumps(common))
    th.update(source_checkpoint={"path": "x", "method": "rd", "backbone": RUN_BACKBONE, "epoch": 1,
                                 "teacher_weights_id": "random:0"},
              backend="torch", features=features([(40, 8, 8), (80, 4, 4), (320, 2, 2)]),
              files={"model.safetensors": {"sha256": "0" * 64, "bytes": 1}},
              build={"backend_choice": "asked for", "seconds": 1.0},
              model={"backbone": RUN_BACKBONE,
                     "student": {"channels": [40, 80, 320], "width_mult": 1, "bottleneck_blocks": 1,
                                 "decoder_blocks": [1, 1, 1]}})
    th["threshold"]["statistics"] = {"n": 5, "mean": 0.5, "std": 0.1, "median": 0.5, "min": 0.4, "max": 0.6,
                                     "k": 3.0}
    return {"ov": ov, "torch": th}


def structure(m: Any) -> Any:
    """A manifest's shape (keys and list lengths) without its values: what the case list depends on."""
    if isinstance(m, dict):
        return {k: structure(v) for k, v in m.items()}
    if isinstance(m, list):
        return [structure(v) for v in m]
    return None
