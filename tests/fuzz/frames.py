"""Frame mutations: each name -> (images, canonical frames with the same pixels, score options)."""
from __future__ import annotations

from typing import Any

from .cases import SEED

MAX_FRAME_PIXELS = 2 ** 28  # docs/engine_format.md's shared limit


def make_frames(name: str, base: Any) -> tuple[Any, Any, dict]:
    """-> (images, canonical uint8 frames with the same pixels (or None), score kwargs)."""
    import numpy as np
    import torch

    F = base
    kw: dict = {"pixel_format": "RGB"}
    canon: Any = F
    rng = np.random.default_rng(SEED)
    if name == "fortran_order":
        img = np.asfortranarray(F)
    elif name == "neg_stride_w":
        img = np.ascontiguousarray(F[:, :, ::-1])[:, :, ::-1]
    elif name == "neg_stride_h":
        img = np.ascontiguousarray(F[:, ::-1])[:, ::-1]
    elif name == "padded_rows":
        big = np.zeros((F.shape[0], F.shape[1], F.shape[2] + 11, 3), np.uint8)
        big[:, :, :F.shape[2]] = F
        img = big[:, :, :F.shape[2]]
    elif name == "planar_channels":
        img = np.ascontiguousarray(F.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)
    elif name == "readonly":
        img = F.copy()
        img.setflags(write=False)
    elif name == "torch":
        img = torch.from_numpy(F.copy())
    elif name == "torch_permuted":
        img = torch.from_numpy(np.ascontiguousarray(F.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    elif name == "list":
        img = [F[0], F[1]]
    elif name == "tuple":
        img = (F[0], F[1])
    elif name == "list_torch":
        img = [torch.from_numpy(F[0].copy()), torch.from_numpy(F[1].copy())]
    elif name == "list_noncontig":
        img = [np.asfortranarray(F[0]), F[1][:, ::-1][:, ::-1]]
    elif name == "lowercase_rgb":
        img, kw = F, {"pixel_format": "rgb"}
    elif name == "bgr_reversed":
        img, kw = F[..., ::-1], {"pixel_format": "BGR"}
    elif name == "batch_over_max":
        img = canon = np.concatenate([F, F[::-1], F], axis=0)
    elif name == "broadcast_batch":
        img = np.broadcast_to(F[:1], (3,) + F.shape[1:])
        canon = np.ascontiguousarray(img)
    elif name == "torch_expand":
        img = torch.from_numpy(F[:1].copy()).expand(3, -1, -1, -1)
        canon = np.repeat(F[:1], 3, axis=0)
    elif name == "mono_nhw":
        g = np.ascontiguousarray(F[..., 0])
        img, canon, kw = g, g[..., None], {"pixel_format": "MONO"}
    elif name == "mono_nhw1":
        img, canon, kw = np.ascontiguousarray(F[..., :1]), None, {"pixel_format": "MONO"}
    elif name == "list_mixed_sizes":
        img = canon = [F[0], F[1][:20, :31], np.ascontiguousarray(F[0][:7, :50])]
    elif name == "every_other_column":
        big = np.repeat(F, 2, axis=2)
        img, canon = big[:, :, ::2], np.ascontiguousarray(big[:, :, ::2])
    elif name == "return_maps_false":
        img, kw = F, {"pixel_format": "RGB", "return_maps": False}
    elif name == "single":
        img = canon = F[:1]
    elif name in ("float32", "float64", "float16"):
        img = F.astype(name)
    elif name == "requires_grad":
        img = torch.from_numpy(F.astype(np.float32)).requires_grad_(True)
    elif name == "list_mixed_dtype":
        img = [F[0], F[1].astype(np.float32)]
    elif name in ("int8", "int16", "uint16", "int32", "int64", "uint32", "bool", "complex64"):
        img = F.astype(name)
    elif name == "object":
        img = F.astype(object)
    elif name == "strings":
        img = F.astype(str)
    elif name.startswith("float_"):
        img = F.astype(np.float32)
        img[0, 3, 4, 1] = {"float_nan": np.nan, "float_inf": np.inf, "float_neg": -1.0, "float_256": 256.0,
                           "float_1e30": 1e30}[name]
    elif name == "rank0":
        img = np.uint8(3)
    elif name == "rank1":
        img = F.reshape(-1)
    elif name == "rank2_rgb":
        img = F[0, :, :, 0]
    elif name == "rank3_rgb":
        img = F[0]
    elif name == "rank5":
        img = F[None]
    elif name == "rank6":
        img = F[None, None]
    elif name.startswith("channels"):
        c = int(name[8:])
        img = np.zeros(F.shape[:3] + (c,), np.uint8) + 7
    elif name == "mono_3ch":
        img, kw = F, {"pixel_format": "MONO"}
    elif name == "n0":
        img = F[:0]
    elif name == "h0":
        img = F[:, :0]
    elif name == "w0":
        img = F[:, :, :0]
    elif name == "empty_list":
        img = []
    elif name == "list_none":
        img = [F[0], None]
    elif name == "list_int":
        img = [F[0], 3]
    elif name == "nested_lists":
        img = F[:1, :4, :4].tolist()
    elif name == "dict":
        img = {"frames": F}
    elif name == "none":
        img = None
    elif name == "string":
        img = "frame.png"
    elif name == "bytes":
        img = F.tobytes()
    elif name == "list_mixed_channels":
        img = [F[0], F[1][..., :1]]
    elif name == "list_nan_frame":
        bad = F[1].astype(np.float32)
        bad[0, 0, 0] = np.nan
        img = [F[0], bad]
    elif name.startswith("fmt_"):
        img = F
        kw = {"pixel_format": {"fmt_yuv": "YUV", "fmt_empty": "", "fmt_none": None, "fmt_int": 3,
                               "fmt_bytes": b"RGB", "fmt_rgba": "RGBA"}[name]}
    elif name == "huge_broadcast":
        img = np.broadcast_to(np.uint8(9), (1, 16385, 16385, 3))
    elif name == "huge_mono_row":
        img, kw = np.broadcast_to(np.uint8(9), (1, 1, MAX_FRAME_PIXELS + 1)), {"pixel_format": "MONO"}
    elif name == "map_size_bogus":
        img, kw = F, {"pixel_format": "RGB", "map_size": "huge"}
    elif name == "map_size_input":
        img, kw = F, {"pixel_format": "RGB", "map_size": "input"}
    elif name == "meta_tensor":
        img = torch.empty(F.shape, dtype=torch.uint8, device="meta")
    elif name == "tiny_1x1":
        img = F[:, :1, :1]
    elif name == "row_1x3000":
        img = rng.integers(0, 256, (1, 1, 3000, 3), dtype=np.uint8)
    elif name == "large_3000x4000":
        img = np.broadcast_to(F[:1, :1, :1], (1, 3000, 4000, 3)).copy()
        img[0, ::97, ::89] = 255
    elif name == "col_3000x1":
        img = rng.integers(0, 256, (1, 3000, 1, 3), dtype=np.uint8)
    elif name == "black":
        img = np.zeros_like(F)
    elif name == "white":
        img = np.full_like(F, 255)
    else:
        raise ValueError(name)
    return img, canon, kw
