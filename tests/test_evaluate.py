"""Evaluation wiring (labels, masks and maps stay aligned; counts), the no-mask and bad-test-set
paths, and the overlay helpers."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cdd_engine.anomaly_map import anomaly_map
from cdd_engine.data import ImageDataset, read_dataset
from cdd_engine.evaluate import evaluate
from cdd_engine.metrics import aupro, f1_max, image_auroc, pixel_auroc
from cdd_engine.models import build_rd_model
from cdd_engine.visualize import colormap, outline, overlay, overlay_panel
from rd_fixtures import one_torch_thread, write_tiny_mvtec  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = write_tiny_mvtec(tmp_path_factory.mktemp("ev"), n_train=4, n_good=3, n_bad=4)
    return read_dataset(root, "mvtec", "widget")


@pytest.fixture(scope="module")
def model():
    return build_rd_model("efficientnet_lite0", pretrained=False, image_size=64, seed=3).eval()


def test_evaluate_equals_metrics_on_directly_computed_maps(split, model):
    got = evaluate(model, split, batch_size=3, threshold=1.0)
    ds = ImageDataset(split.test, model.image_size, *model.normalization, color="rgb", with_masks=True, cache=False)
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        t, s = model(torch.stack([it["image"] for it in items]))
        maps, scores = anomaly_map(t, s, model.image_size)
    labels = np.array([it["label"] for it in items])
    masks = np.stack([it["mask"][0].numpy() > 0.5 for it in items]).astype(np.uint8)
    assert masks.sum() > 0 and labels.sum() == 4
    assert got["image_auroc"] == pytest.approx(image_auroc(labels, scores.numpy()), abs=1e-12)
    assert got["pixel_auroc"] == pytest.approx(pixel_auroc(masks, maps.numpy()), abs=1e-6)
    assert got["aupro"] == pytest.approx(aupro(masks, maps.numpy()), abs=1e-6)
    assert got["f1_max"] == pytest.approx(f1_max(labels, scores.numpy()), abs=1e-12)
    assert (got["n_test"], got["n_test_good"], got["n_test_anomalous"], got["n_train"], got["n_injected"]) == \
        (7, 3, 4, 4, 0)
    assert "f1_at_threshold" in got and got["threshold"] == 1.0


def test_without_masks_only_image_metrics(split, model):
    test = [dataclasses.replace(s, mask_path=None) for s in split.test]
    got = evaluate(model, dataclasses.replace(split, test=test))
    assert got["pixel_auroc"] is None and got["aupro"] is None and 0.0 <= got["image_auroc"] <= 1.0


def test_test_set_needs_both_classes(split, model):
    only_good = dataclasses.replace(split, test=[s for s in split.test if s.label == 0])
    with pytest.raises(ValueError, match="3 good, 0 anomalous"):
        evaluate(model, only_good)


def test_overlay_helpers():
    assert colormap(np.array([0.0, 1.0])).tolist() == [[0, 0, 128], [128, 0, 0]]
    assert colormap(np.array([-5.0]))[0].tolist() == [0, 0, 128]          # clipped
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    o = outline(m)
    assert o.sum() == 4 * 5 - 4 and not o[4, 4] and o[2, 4]
    img = np.full((9, 9, 3), 100, np.uint8)
    amap = np.linspace(0, 1, 81).reshape(9, 9)
    ov = overlay(img, amap, 0.0, 1.0, alpha=0.5)
    assert ov.shape == (9, 9, 3) and ov.dtype == np.uint8
    assert ov[0, 0].tolist() == [50, 50, 114]                             # (100 + (0, 0, 128)) / 2
    panel = overlay_panel(img, amap, m, 0.0, 1.0)
    assert panel.shape == (9, 18, 3) and panel[2, 4].tolist() == [0, 255, 0]
    with pytest.raises(ValueError, match="vmax > vmin"):
        overlay(img, amap, 1.0, 1.0)
    with pytest.raises(ValueError, match="same size"):
        overlay(img, amap[:5], 0.0, 1.0)
