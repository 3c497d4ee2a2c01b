"""Evaluation metrics of anomaly detection: image/pixel AUROC, AUPRO, F1.

Every function takes numpy arrays or torch tensors (converted to float64 numpy) and
returns a Python float. Labels and masks are {0,1} (bool accepted), 1 = anomalous; a
higher score means more anomalous, and "predicted anomalous" means score >= threshold.
Bad input (empty, shape mismatch, NaN, labels other than 0/1, only one class) raises
ValueError/TypeError with what was expected and what was got.

AUPRO follows the MVTec AD evaluation: connected components of the ground truth with
8-connectivity (the 3x3 structure of MVTec's reference code), per-region overlap averaged
over all regions of all images at each threshold, false-positive rate over all good pixels
of all images, PRO integrated over FPR in [0, max_fpr] with the curve interpolated
linearly at max_fpr, divided by max_fpr. By default the curve is exact (every distinct
map value is a threshold), computed with sorts, binary search and cumulative sums
(no Python loop over thresholds).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["image_auroc", "pixel_auroc", "aupro", "pro_curve", "f1_max", "f1_at_threshold", "spearman"]

_CONNECTIVITY = np.ones((3, 3), dtype=bool)  # 8-connectivity, as MVTec AD's reference code


def _as_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be array-like, got {type(x).__name__} ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _binary(x, name: str) -> np.ndarray:
    arr = _as_array(x, name)
    if arr.dtype != bool:
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN")
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            raise ValueError(f"{name} must contain only 0 and 1, got value {arr[bad].flat[0]!r}")
    return arr.astype(bool)


def _scores(x, name: str) -> np.ndarray:
    arr = _as_array(x, name).astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains {int(np.isnan(arr).sum())} NaN value(s)")
    return arr


def _pair(labels, scores, lname: str, sname: str, ndim: int | None) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(labels, lname)
    s = _scores(scores, sname)
    if y.shape != s.shape:
        raise ValueError(f"{lname} and {sname} must have the same shape, got {y.shape} and {s.shape}")
    if ndim is not None and y.ndim != ndim:
        raise ValueError(f"{lname} must be {ndim}-D, got shape {y.shape}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous (1)" if n_pos else "good (0)"
        raise ValueError(f"{lname} contain only {only} entries; the metric needs both classes")
    return y.ravel(), s.ravel()


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos * n_neg), ties counted half (= trapezoidal ROC area).

    Sorting the two classes separately and counting with binary search is several times
    faster than ranking all values (np.sort is vectorised, argsort/rankdata are not).
    """
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    return float((below + below_or_tied) / 2.0 / (pos.size * neg.size))


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores. labels (N,) {0,1}, scores (N,)."""
    return _auroc(*_pair(labels, scores, "labels", "scores", ndim=1))


def pixel_auroc(masks, maps) -> float:
    """Area under the ROC curve over all pixels. masks (N,H,W) {0,1}, maps (N,H,W)."""
    return _auroc(*_pair(masks, maps, "masks", "maps", ndim=None))


def _masks_maps(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    m = _binary(masks, "masks")
    a = _scores(maps, "maps")
    if m.shape != a.shape:
        raise ValueError(f"masks and maps must have the same shape, got {m.shape} and {a.shape}")
    if m.ndim == 2:
        m, a = m[None], a[None]
    if m.ndim != 3:
        raise ValueError(f"masks must be (N,H,W) or (H,W), got shape {m.shape}")
    return m, a


def pro_curve(masks, maps, num_thresholds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve as vertices (fpr, pro), float64 1-D, from (0, 0); fpr is non-decreasing.

    num_thresholds=None: the exact curve, with every distinct map value as a threshold.
    Between two consecutive defect-pixel values only good pixels cross the threshold, so
    the curve runs horizontally there; it is therefore fully described by two vertices per
    distinct defect value (just above it and at it) plus the end point. An int T >= 2: T
    thresholds evenly spaced from the largest to the smallest map value.
    """
    m, a = _masks_maps(masks, maps)
    regions = np.zeros(m.shape, np.int64)
    n_regions = 0
    for i in range(m.shape[0]):
        lab, k = ndimage.label(m[i], structure=_CONNECTIVITY)
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += k
    if n_regions == 0:
        raise ValueError("masks contain no anomalous pixel: PRO needs at least one defect region")
    good = np.sort(a[~m])
    n_good = good.size
    if n_good == 0:
        raise ValueError("masks contain no good pixel: the false-positive rate is undefined")
    sizes = np.bincount(regions.ravel(), minlength=n_regions + 1).astype(np.float64)
    # A defect pixel of region r adds 1/(|r| * n_regions) to the PRO once it is >= threshold.
    weight = np.zeros(n_regions + 1)
    weight[1:] = 1.0 / (sizes[1:] * n_regions)
    defect_vals = a[m]
    order = np.argsort(-defect_vals, kind="stable")
    d_sorted = defect_vals[order]
    pro_cum = np.cumsum(weight[regions[m][order]])

    def good_ge(t: np.ndarray) -> np.ndarray:  # good pixels with score >= t
        return n_good - np.searchsorted(good, t, side="left")

    if num_thresholds is None:
        ends = np.append(np.flatnonzero(d_sorted[1:] != d_sorted[:-1]), d_sorted.size - 1)
        t = d_sorted[ends]
        pro_at = pro_cum[ends]
        pro_before = np.concatenate([[0.0], pro_at[:-1]])
        fpr_before = (n_good - np.searchsorted(good, t, side="right")) / n_good  # score > t
        fpr_at = good_ge(t) / n_good
        fpr = np.concatenate([[0.0], np.stack([fpr_before, fpr_at], 1).ravel(), [1.0]])
        pro = np.concatenate([[0.0], np.stack([pro_before, pro_at], 1).ravel(), [pro_at[-1]]])
    else:
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)) \
                or num_thresholds < 2:
            raise ValueError(f"num_thresholds must be None or an int >= 2, got {num_thresholds!r}")
        thresholds = np.linspace(a.max(), a.min(), int(num_thresholds))
        thresholds[-1] = a.min()  # the last threshold takes every pixel
        k = np.searchsorted(-d_sorted, -thresholds, side="right")  # defect pixels with score >= t
        pro = np.concatenate([[0.0], np.where(k > 0, pro_cum[np.maximum(k - 1, 0)], 0.0)])
        fpr = np.concatenate([[0.0], good_ge(thresholds) / n_good])
    return fpr, np.minimum(pro, 1.0)


def _area_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under y(x) on [0, x_max], y interpolated linearly at x_max."""
    k = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:k], y[:k]
    if k < x.size and xs[-1] < x_max:
        x0, y0, x1, y1 = x[k - 1], y[k - 1], x[k], y[k]
        xs = np.append(xs, x_max)
        ys = np.append(ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0))
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) * 0.5))


def aupro(masks, maps, max_fpr: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to max_fpr (MVTec AD's AUPRO; 1.0 is perfect).

    masks (N,H,W) {0,1}, maps (N,H,W) (a single (H,W) pair is accepted). See the module
    docstring for the exact definition and `pro_curve` for num_thresholds.
    """
    if isinstance(max_fpr, bool) or not isinstance(max_fpr, (int, float, np.floating)) \
            or not 0.0 < float(max_fpr) <= 1.0:
        raise ValueError(f"max_fpr must be a number in (0, 1], got {max_fpr!r}")
    fpr, pro = pro_curve(masks, maps, num_thresholds)
    return _area_to(fpr, pro, float(max_fpr)) / float(max_fpr)


def f1_max(labels, scores) -> float:
    """Best F1 over all thresholds (each distinct score; predicted anomalous = score >= t)."""
    y, s = _pair(labels, scores, "labels", "scores", ndim=1)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.append(np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1)
    tp = np.cumsum(y_sorted)[ends].astype(np.float64)
    predicted = (ends + 1).astype(np.float64)
    f1 = 2.0 * tp / (predicted + y.sum())  # 2TP / (2TP + FP + FN)
    return float(f1.max())


def f1_at_threshold(labels, scores, threshold: float) -> float:
    """F1 of the decision score >= threshold. labels (N,) {0,1}, scores (N,)."""
    y, s = _pair(labels, scores, "labels", "scores", ndim=1)
    if hasattr(threshold, "detach"):  # torch scalar tensor
        threshold = threshold.detach().cpu().numpy()
    if isinstance(threshold, (np.ndarray, np.generic)) and threshold.size == 1:
        threshold = threshold.item()
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)) \
            or np.isnan(threshold):
        raise ValueError(f"threshold must be a number (not NaN), got {threshold!r}")
    pred = s >= float(threshold)
    tp = int((pred & y).sum())
    return float(2.0 * tp / (int(pred.sum()) + int(y.sum())))


def spearman(a, b) -> float:
    """Spearman rank correlation of two 1-D sequences (``scipy.stats.spearmanr``: ties share their
    average rank); NaN when either side is constant (no order to compare). The INT8 guard and the
    quantizer's accuracy control compare INT8 scores with fp32 scores by it."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"spearman needs two 1-D sequences of equal length >= 2, got {a.shape} and {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # scipy would warn and return NaN
        return math.nan
    from scipy.stats import spearmanr  # scipy.stats loads in ~0.3 s: only when a guard runs

    return float(spearmanr(a, b).statistic)
