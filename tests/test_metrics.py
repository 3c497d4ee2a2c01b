"""cdd_engine.metrics against scikit-learn and against hand-computed AUPRO cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

from cdd_engine import metrics as M


def _labels_scores(rng, n, ties=False):
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + 0.8 * labels
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    return labels, scores


@pytest.mark.parametrize("n,ties", [(7, False), (50, True), (333, False), (1000, True)])
def test_image_auroc_matches_sklearn(n, ties):
    rng = np.random.default_rng(n)
    labels, scores = _labels_scores(rng, n, ties)
    assert M.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_pixel_auroc_matches_sklearn_and_accepts_torch():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 17, 23)) < 0.1
    maps = np.round(rng.random((3, 17, 23)) + masks * 0.3, 2).astype(np.float32)
    want = roc_auc_score(masks.ravel(), maps.ravel())
    assert M.pixel_auroc(masks, maps) == pytest.approx(want, abs=1e-12)
    assert M.pixel_auroc(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(want, abs=1e-12)
    bf16 = torch.from_numpy(maps).bfloat16()  # numpy has no bfloat16: converted through float32
    want_bf16 = roc_auc_score(masks.ravel(), bf16.float().numpy().ravel())
    assert M.pixel_auroc(masks, bf16) == pytest.approx(want_bf16, abs=1e-12)


@pytest.mark.parametrize("n,ties", [(9, False), (120, True), (500, False)])
def test_f1_max_matches_sklearn(n, ties):
    rng = np.random.default_rng(n + 7)
    labels, scores = _labels_scores(rng, n, ties)
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    assert M.f1_max(labels, scores) == pytest.approx(f1.max(), abs=1e-12)


def test_f1_at_threshold_counts():
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.2, 0.95])
    # >= 0.5: predicted {1,2,3,5}: TP 2 (idx 2,3), FP 2, FN 1 -> F1 = 4 / (4 + 2 + 1)
    assert M.f1_at_threshold(labels, scores, 0.5) == pytest.approx(4 / 7)
    assert M.f1_at_threshold(labels, scores, 2.0) == 0.0
    assert M.f1_at_threshold(labels, torch.tensor(scores), torch.tensor(0.5)) == pytest.approx(4 / 7)
    rng = np.random.default_rng(3)
    labels, scores = _labels_scores(rng, 200)
    best = max(M.f1_at_threshold(labels, scores, t) for t in np.unique(scores))
    assert M.f1_max(labels, scores) == pytest.approx(best, abs=1e-12)


# ----------------------------------------------------------------------------- AUPRO
def _aupro_bruteforce(masks, maps, max_fpr):
    """Direct definition: loop over every distinct threshold, label regions per image."""
    regions = []
    for m in masks:
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [lab == i for i in range(1, k + 1)]
    reg_maps = []
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m, structure=np.ones((3, 3)))
        reg_maps += [(i, lab == j) for j in range(1, k + 1)]
    good = ~masks.astype(bool)
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        xs.append((above & good).sum() / good.sum())
        ys.append(np.mean([above[i][r].mean() for i, r in reg_maps]))
    xs, ys = np.array(xs), np.array(ys)
    keep = xs <= max_fpr
    x, y = list(xs[keep]), list(ys[keep])
    if x[-1] < max_fpr:
        j = np.argmax(xs > max_fpr)
        y.append(ys[j - 1] + (ys[j] - ys[j - 1]) * (max_fpr - xs[j - 1]) / (xs[j] - xs[j - 1]))
        x.append(max_fpr)
    x, y = np.array(x), np.array(y)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / max_fpr)


@pytest.mark.parametrize("seed,max_fpr", [(0, 0.3), (1, 0.05), (2, 1.0), (3, 0.3)])
def test_aupro_matches_bruteforce_definition(seed, max_fpr):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 19, 21), bool)
    masks[0, 2:6, 3:8] = True
    masks[0, 10:12, 10:19] = True
    masks[1, 5:6, 5:6] = True
    masks[1, 6:9, 6:9] = True  # touches the pixel above diagonally: one 8-connected region
    masks[2, 14:18, 1:4] = True
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # quantised: ties everywhere
    assert M.aupro(masks, maps, max_fpr) == pytest.approx(_aupro_bruteforce(masks, maps, max_fpr), abs=1e-12)


def test_aupro_perfect_map_is_one():
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[0, 3:7, 3:7] = 1
    masks[1, 10:12, 2:14] = 1
    rng = np.random.default_rng(4)
    maps = np.where(masks, 2 + rng.random(masks.shape), rng.random(masks.shape))
    assert M.aupro(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_aupro_one_region_found_one_missed_is_half():
    rng = np.random.default_rng(5)
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 2:8, 2:8] = True  # found: above every good pixel
    masks[1, 12:15, 12:15] = True  # missed: below every good pixel, so only reached at FPR 1
    maps = 0.1 + 0.8 * rng.random(masks.shape)
    maps[0][masks[0]] = 5.0
    maps[1][masks[1]] = 0.0
    assert M.aupro(masks, maps, max_fpr=0.3) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("max_fpr", [0.3, 0.1, 1.0])
def test_aupro_constant_map_is_half_of_max_fpr(max_fpr):
    # one threshold: the curve jumps straight from (0,0) to (1,1); area to x is x^2/2
    masks = np.zeros((3, 10, 12), bool)
    masks[1, 2:5, 2:5] = True
    maps = np.full(masks.shape, 0.7, np.float32)
    assert M.aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(max_fpr / 2, abs=1e-12)


def test_aupro_averages_over_regions_not_pixels():
    rng = np.random.default_rng(6)
    masks = np.zeros((1, 30, 30), bool)
    masks[0, 1:3, 1:3] = True  # small region (4 px): all detected
    masks[0, 10:20, 10:20] = True  # large region (100 px): half detected, half missed
    maps = 0.1 + 0.8 * rng.random(masks.shape)
    maps[0, 1:3, 1:3] = 5.0
    maps[0, 10:15, 10:20] = 5.0
    maps[0, 15:20, 10:20] = 0.0
    # PRO = (1 + 0.5) / 2 = 0.75 for every FPR below 1 (pixel-weighted would be 54/104)
    assert M.aupro(masks, maps) == pytest.approx(0.75, abs=1e-12)


def test_aupro_max_fpr_interpolates_between_vertices():
    # one good pixel per score step: PRO 0 until the defect (score 0.55) is reached after 4 of
    # 10 good pixels (FPR 0.4), then 1. With max_fpr 0.5 the area is 0.1 -> 0.2 normalised;
    # the curve vertices are at 0.4 and 0.5 so the segment (0.4,1)-(0.5,1) is integrated.
    masks = np.zeros((1, 1, 11), bool)
    masks[0, 0, 10] = True
    maps = np.array([[[0.95, 0.85, 0.75, 0.65, 0.45, 0.35, 0.25, 0.15, 0.05, 0.01, 0.55]]])
    assert M.aupro(masks, maps, max_fpr=0.5) == pytest.approx(0.1 / 0.5, abs=1e-12)
    # max_fpr 0.45 falls inside the flat segment (0.4,1)-(0.5,1): area 0.05 -> 0.05/0.45
    assert M.aupro(masks, maps, max_fpr=0.45) == pytest.approx(0.05 / 0.45, abs=1e-12)
    # max_fpr 0.35: PRO still 0 there
    assert M.aupro(masks, maps, max_fpr=0.35) == 0.0


def test_aupro_eight_connectivity():
    # a 2x2 and a 3x3 block touching at a corner form ONE region (MVTec's 3x3 structure)
    masks = np.zeros((1, 9, 9), bool)
    masks[0, 0:2, 0:2] = True
    masks[0, 2:5, 2:5] = True
    maps = 0.1 + 0.4 * np.random.default_rng(7).random(masks.shape)
    maps[0, 0:2, 0:2] = 2.0  # the small block found, the large one below every good pixel
    maps[0, 2:5, 2:5] = 0.0
    # one region: PRO = 4/13 (two 4-connected regions would give (1 + 0) / 2)
    assert M.aupro(masks, maps) == pytest.approx(4 / 13, abs=1e-12)


def test_aupro_num_thresholds_approaches_exact():
    rng = np.random.default_rng(8)
    masks = np.zeros((5, 32, 32), bool)
    for i in range(5):
        masks[i, 4 + i:10 + 2 * i, 5:12 + i] = True
    maps = ndimage.gaussian_filter(rng.random(masks.shape), (0, 1, 1)) + 0.05 * masks
    exact = M.aupro(masks, maps)
    coarse = M.aupro(masks, maps, num_thresholds=2000)
    assert abs(coarse - exact) < 5e-3
    assert exact != coarse  # sampled thresholds are not the exact curve
    fpr, pro = M.pro_curve(masks, maps)
    assert fpr[0] == 0.0 and pro[0] == 0.0 and fpr[-1] == 1.0 and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-15)


# ----------------------------------------------------------------------------- errors
def test_errors_are_clear():
    with pytest.raises(ValueError, match="only"):
        M.image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same shape"):
        M.image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        M.image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        M.f1_max([], [])
    with pytest.raises(ValueError, match="0 and 1"):
        M.image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(TypeError, match="numeric"):
        M.image_auroc(["a", "b"], [0.1, 0.2])
    m = np.zeros((2, 4, 4)); m[0, 1, 1] = 1
    with pytest.raises(ValueError, match="same shape"):
        M.pixel_auroc(m, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        M.aupro(m, np.full((2, 4, 4), np.nan))
    with pytest.raises(ValueError, match="no anomalous pixel"):
        M.aupro(np.zeros((1, 4, 4)), np.random.default_rng(0).random((1, 4, 4)))
    with pytest.raises(ValueError, match="no good pixel"):
        M.aupro(np.ones((1, 4, 4)), np.random.default_rng(0).random((1, 4, 4)))
    with pytest.raises(ValueError, match="max_fpr"):
        M.aupro(m, np.random.default_rng(0).random((2, 4, 4)), max_fpr=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        M.aupro(m, np.random.default_rng(0).random((2, 4, 4)), num_thresholds=1)
    with pytest.raises(ValueError, match="threshold"):
        M.f1_at_threshold([0, 1], [0.1, 0.2], float("nan"))
