"""Winograd F(2x2, 3x3) rewrite of 3x3 convolutions in an OpenVINO model (CPU, fp32).

OpenVINO's CPU plugin has no Winograd convolution on AVX2 machines: every 3x3 convolution runs
as a direct (brgemm) convolution, already at 81-89 % of the plugin's own large-GEMM rate on
the 2-core development machine (benchmarks/RESULTS.md). The only way left to make fp32 faster is
fewer multiplications. Winograd's minimal filtering F(2x2, 3x3) computes each 2x2 output tile
from a 4x4 input tile with 16 products per channel pair instead of 36 (2.25x fewer):

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A     (summed over input channels)

written here with ordinary OpenVINO operations:

1. input transform ``B^T d B`` for every 4x4 tile (stride 2): pad by 1, SpaceToDepth(2), shifted
   slices and additions/subtractions (B has entries 0, ±1: no multiplications); the 16 tile
   components are concatenated into (16, C, N*T), T = (H/2)(W/2) tiles per image;
2. 16 independent GEMMs, one MatMul (16, Cout, C) x (16, C, N*T): the weights ``G g G^T`` are
   computed once in float64 from the convolution's constant weights and stored in float32;
3. output transform ``A^T m A`` as a (4, 16) MatMul, then DepthToSpace(2) back to (N, Cout, H, W).

Numerics: the transforms use only 0, ±1 and ±0.5 (exact in binary), so the result is as close to
the float64 convolution as the direct one (measured on random inputs: 5e-7 to 1.5e-6 relative
against float64, direct 1.6e-6 to 3.8e-6; tests/test_openvino_winograd.py asserts <= 1e-5).

Which convolutions (``MIN_CHANNELS``): measured layer by layer at batch 1, interleaved against
OpenVINO's direct convolution on the development machine (benchmarks/openvino_probe.py
wino-layers): Cin = Cout = 512 at 16x16 1.34-1.51x faster, 256 at 32x32 1.17-1.68x, 1024 at 8x8
1.30-1.43x, but 128 at 64x64 0.89-1.18x (the GEMMs are thin, K = 128, and the transforms' memory
traffic weighs most). In the whole WRN50 RD network the gain is smaller (1.03-1.19x for the
network alone): ~24 small nodes and two layout reorders per rewritten layer, 16/9 more weights.
Only stride-1, pad-1, dilation-1, ungrouped 3x3 convolutions with constant float32 weights, even
H and W, and at least ``MIN_CHANNELS`` input and output channels are rewritten; everything else
is left as it is.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# 256: the smallest channel count clearly faster than the direct convolution (1.17-1.68x at 32x32);
# 128 channels at 64x64 ran 0.89-1.18x alone and no better than 256 in the whole network (three
# runs), so they stay direct.
MIN_CHANNELS = 256

# F(2x2, 3x3) matrices (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def _ops():
    import openvino.opset13 as ops
    return ops


def _i64(values: list[int]) -> Any:
    return _ops().constant(np.array(values, dtype=np.int64))


def _slice(x: Any, axis: int, start: int, stop: int) -> Any:
    ops = _ops()
    return ops.slice(x, _i64([start]), _i64([stop]), _i64([1]), _i64([axis]))


def _combine(terms: list[Any], coef: np.ndarray) -> Any:
    """sum_i coef[i] * terms[i] for coef in {0, 1, -1}, as additions and subtractions."""
    ops = _ops()
    out = None
    for term, c in zip(terms, coef):
        if c == 0:
            continue
        if out is None:
            out = term if c == 1 else ops.negative(term)
        else:
            out = ops.add(out, term) if c == 1 else ops.subtract(out, term)
    return out


def winograd_weights(w: np.ndarray) -> np.ndarray:
    """(Cout, Cin, 3, 3) -> (16, Cout, Cin) float32: ``G g G^T`` per channel pair, computed in float64."""
    u = np.einsum("ai,ocij,bj->aboc", _G, w.astype(np.float64), _G)
    return np.ascontiguousarray(u.reshape(16, w.shape[0], w.shape[1]).astype(np.float32))


def winograd_conv3x3(x: Any, w: np.ndarray, height: int, width: int) -> Any:
    """OpenVINO subgraph of a 3x3, stride-1, pad-1 convolution (no bias) by F(2x2, 3x3).

    Args:
        x: output port of shape (N, Cin, height, width), float32 (N may be dynamic).
        w: (Cout, Cin, 3, 3) float32 weights.
        height, width: static and even.

    Returns:
        the node giving (N, Cout, height, width).
    """
    ops = _ops()
    co, ci = int(w.shape[0]), int(w.shape[1])
    th, tw = height // 2, width // 2
    xp = ops.pad(x, _i64([0, 0, 1, 1]), _i64([0, 0, 1, 1]), "constant", ops.constant(np.float32(0)))
    # (N, Cin*4, th+1, tw+1), channel c*4 + p*2 + q holds padded pixel (2i+p, 2j+q)
    s2d = ops.reshape(ops.space_to_depth(xp, "depth_first", 2), _i64([0, ci, 4, th + 1, tw + 1]), True)
    phase = {(p, q): ops.squeeze(_slice(s2d, 2, 2 * p + q, 2 * p + q + 1), _i64([2]))
             for p in (0, 1) for q in (0, 1)}
    # tile row u = 2*a + p of tile i is padded row 2*(i+a) + p: phase (p, .) shifted by a rows
    rows = {(u, q): _slice(phase[u % 2, q], 2, u // 2, u // 2 + th) for u in range(4) for q in (0, 1)}
    row_t = {(a, q): _combine([rows[u, q] for u in range(4)], _BT[a]) for a in range(4) for q in (0, 1)}
    comps = []
    for a in range(4):
        cols = [_slice(row_t[a, v % 2], 3, v // 2, v // 2 + tw) for v in range(4)]  # (N, Cin, th, tw)
        comps += [ops.unsqueeze(_combine(cols, _BT[b]), _i64([0])) for b in range(4)]
    v = ops.reshape(ops.concat(comps, 0), _i64([16, -1, ci, th * tw]), False)          # (16, N, Cin, T)
    v = ops.reshape(ops.transpose(v, _i64([0, 2, 1, 3])), _i64([16, ci, -1]), False)   # (16, Cin, N*T)
    m = ops.matmul(ops.constant(winograd_weights(w)), v, False, False)                 # (16, Cout, N*T)
    a_out = np.einsum("pa,qb->pqab", _AT, _AT).reshape(4, 16).astype(np.float32)
    y = ops.matmul(ops.constant(a_out), ops.reshape(m, _i64([16, -1]), False), False, False)  # (4, Cout*N*T)
    y = ops.transpose(ops.reshape(y, _i64([4, co, -1, th, tw]), False), _i64([2, 0, 1, 3, 4]))
    y = ops.reshape(y, _i64([-1, 4 * co, th, tw]), False)                               # ch (p*2+q)*Cout + co
    return ops.depth_to_space(y, "blocks_first", 2)


def _eligible(conv: Any, min_channels: int) -> np.ndarray | None:
    """The conv's float32 (Cout, Cin, 3, 3) weights if it can be rewritten, else None."""
    import openvino as ov

    if conv.get_type_name() != "Convolution":
        return None
    attrs = conv.get_attributes()
    if (list(attrs["strides"]) != [1, 1] or list(attrs["dilations"]) != [1, 1]
            or list(attrs["pads_begin"]) != [1, 1] or list(attrs["pads_end"]) != [1, 1]
            or str(attrs.get("auto_pad", "explicit")).lower() not in ("explicit", "notset")):
        return None
    wnode = conv.input_value(1).get_node()
    if wnode.get_type_name() != "Constant" or wnode.get_output_element_type(0) != ov.Type.f32:
        return None
    xshape = conv.input_value(0).get_partial_shape()
    if xshape.rank.is_dynamic or xshape.rank.get_length() != 4 or any(d.is_dynamic for d in list(xshape)[1:]):
        return None
    h, w_ = xshape[2].get_length(), xshape[3].get_length()
    weights = wnode.get_data()
    if weights.shape[2:] != (3, 3) or h % 2 or w_ % 2 or min(weights.shape[:2]) < min_channels:
        return None
    return weights


def apply_winograd(model: Any, min_channels: int | None = None) -> int:
    """Rewrite the eligible 3x3 convolutions of ``model`` (an ov.Model, changed in place).

    min_channels: smallest Cin and Cout rewritten (None -> ``MIN_CHANNELS``).
    Returns the number of convolutions rewritten. The model's inputs, outputs and names are
    unchanged; channels and spatial sizes must be static (the batch may be dynamic).
    """
    if min_channels is None:
        min_channels = MIN_CHANNELS
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be a positive integer, got {min_channels!r}")
    count = 0
    for conv in list(model.get_ordered_ops()):
        weights = _eligible(conv, min_channels)
        if weights is None:
            continue
        shape = conv.input_value(0).get_partial_shape()
        new = winograd_conv3x3(conv.input_value(0), np.asarray(weights, dtype=np.float32),
                               shape[2].get_length(), shape[3].get_length())
        new.set_friendly_name(conv.get_friendly_name() + "/winograd")
        names = conv.output(0).get_names()
        if names:  # e.g. a convolution that is a model output: its tensor names move to the new node
            new.output(0).get_tensor().set_names(set(names))
        for target in list(conv.output(0).get_target_inputs()):
            target.replace_source_output(new.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count
