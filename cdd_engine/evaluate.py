"""Evaluation of an RD model on a labelled test set: image AUROC, pixel AUROC, AUPRO, F1-max.

:func:`evaluate` scores a split's test images with the reference anomaly map
(docs/anomaly_map.md); :func:`evaluate_run` does it for a run directory and re-applies the run's
noise manifest, so images that were injected into training are left out of the test set
(unless the run used ``overlap``) without the caller having to know about them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .anomaly_map import anomaly_map
from .data.samples import ANOMALOUS, GOOD, DatasetSplit
from .threshold import is_anomalous

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


def score_dataset(model, dataset, batch_size: int = 16, device: str | torch.device = "cpu", mode: str = "add",
                  sigma: float = 4.0, progress: bool = False, desc: str = "scoring"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Score every item of an ImageDataset.

    Returns maps float32 (N, H, W), scores float64 (N,) and, when the dataset gives masks,
    masks uint8 (N, H, W); (H, W) = ``model.image_size``.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm
    model.eval()
    n = len(dataset)
    h, w = model.image_size
    maps = np.empty((n, h, w), dtype=np.float32)
    scores = np.empty(n, dtype=np.float64)
    masks = np.empty((n, h, w), dtype=np.uint8) if getattr(dataset, "with_masks", False) else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    i = 0
    with torch.no_grad(), tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for item in loader:
            x = item["image"].to(device)
            t, s = model(x)
            m, sc = anomaly_map(t, s, (h, w), mode=mode, sigma=sigma)
            b = x.shape[0]
            maps[i:i + b] = m.float().cpu().numpy()
            scores[i:i + b] = sc.double().cpu().numpy()
            if masks is not None:
                masks[i:i + b] = (item["mask"][:, 0] > 0.5).numpy()
            i += b
            bar.update(b)
    return maps, scores, masks


def evaluate(model, split: DatasetSplit, batch_size: int = 16, device: str | torch.device = "cpu",
             color: str | None = None, mode: str = "add", sigma: float = 4.0, progress: bool = False,
             overlays_dir: str | Path | None = None, n_injected: int | None = None,
             threshold: float | None = None, force: bool = False) -> dict[str, Any]:
    """Metrics of ``model`` (teacher + student, eval mode) on ``split.test``.

    Args:
        model: returns (teacher_feats, student_feats) for normalised (B,3,H,W) images and has
            ``image_size`` (H, W) and ``normalization`` ((mean), (std)).
        split: its ``test`` needs good (label 0) and anomalous (label 1) images; anomalous
            ones without masks leave pixel_auroc/aupro None. ``split.train`` is only counted.
        color: "rgb"/"gray" (default: detected from the first training or test image).
        overlays_dir: write a heat-map overlay PNG per test image there (``<defect>/<stem>.png``).
        n_injected: training images injected from the test anomalies (default: counted from
            the training samples whose ``defect_type`` is a defect name).
        threshold: a score threshold (from training scores); adds ``f1_at_threshold``.
        force: write overlays into a folder even over files this tool did not write (--force).

    Returns:
        dict with image_auroc, pixel_auroc, aupro, f1_max, n_test, n_test_good,
        n_test_anomalous, n_train, n_injected, seconds (and threshold, f1_at_threshold), and
        ``images``: per test image {path, score, threshold, verdict, label, defect} in test-set
        order, verdict "anomalous"/"ok" (score > threshold) or None without a threshold.
    """
    from .data import ImageDataset, detect_color
    test, has_masks = _check_test_set(split)
    if color is None:
        color = detect_color(split.train if split.train else test)
    mean, std = model.normalization
    # cache=False: the cache rounds resized images to uint8, and metrics must not depend on
    # whether overlays were asked for (overlays re-read the files).
    # Pixel metrics need a mask for every anomalous image; without them only image metrics.
    dataset = ImageDataset(test, model.image_size, mean, std, color=color, with_masks=has_masks, cache=False)
    if overlays_dir is not None:  # a folder holding files this tool did not write is refused before scoring
        from .visualize import check_eval_overlays
        check_eval_overlays(overlays_dir, test, force=force)
    t0 = time.perf_counter()
    maps, scores, masks = score_dataset(model, dataset, batch_size, device, mode, sigma, progress, "evaluating")
    seconds = time.perf_counter() - t0
    return _metrics(split, dataset, maps, scores, masks, seconds, n_injected, threshold, overlays_dir, mean, std)


def _check_test_set(split: DatasetSplit) -> tuple[list, bool]:
    """-> (test samples, whether every anomalous one has a mask); refuses a test set without both classes."""
    test = list(split.test)
    n_good = sum(s.label == GOOD for s in test)
    n_bad = sum(s.label == ANOMALOUS for s in test)
    if n_good == 0 or n_bad == 0 or n_good + n_bad != len(test):
        raise ValueError(f"evaluation needs a test set of good and anomalous images only; {split.name} has "
                         f"{n_good} good, {n_bad} anomalous and {len(test) - n_good - n_bad} unlabelled")
    return test, all(s.mask_path for s in test if s.label == ANOMALOUS)


def _metrics(split: DatasetSplit, dataset, maps: np.ndarray, scores: np.ndarray, masks: np.ndarray | None,
             seconds: float, n_injected: int | None, threshold: float | None, overlays_dir: str | Path | None,
             mean, std) -> dict[str, Any]:
    """The metrics, per-image records and overlays of scored test images (checkpoint and engine alike)."""
    from .metrics import aupro, f1_at_threshold, f1_max, image_auroc, pixel_auroc
    test = dataset.samples
    labels = np.array([s.label for s in test], dtype=np.int64)
    if n_injected is None:
        n_injected = sum(s.defect_type not in ("good", "unknown") for s in split.train)
    has_masks = masks is not None
    result: dict[str, Any] = {
        "image_auroc": float(image_auroc(labels, scores)),
        "pixel_auroc": float(pixel_auroc(masks, maps)) if has_masks else None,
        "aupro": float(aupro(masks, maps)) if has_masks else None,
        "f1_max": float(f1_max(labels, scores)),
        "n_test": len(test), "n_test_good": int((labels == GOOD).sum()),
        "n_test_anomalous": int((labels == ANOMALOUS).sum()),
        "n_train": len(split.train), "n_injected": int(n_injected),
        "seconds": seconds,
    }
    if threshold is not None:
        result["threshold"] = float(threshold)
        result["f1_at_threshold"] = float(f1_at_threshold(labels, scores, threshold))
    result["images"] = per_image_results(test, scores, threshold)
    if overlays_dir is not None:
        from .visualize import save_overlays
        save_overlays(overlays_dir, dataset, maps, scores, mean, std, threshold=threshold)
        result["overlays"] = str(overlays_dir)
    return result


def per_image_results(test, scores, threshold: float | None) -> list[dict[str, Any]]:
    """One record per test image: path, score, threshold, verdict (threshold.is_anomalous, the
    engine's rule: NaN is "anomalous"; None without a threshold), label ("good"/"anomalous") and defect (the folder name)."""
    out = []
    for s, v in zip(test, np.asarray(scores, dtype=np.float64).tolist()):
        verdict = None if threshold is None else ("anomalous" if is_anomalous(v, threshold) else "ok")
        out.append({"path": s.path, "score": v, "threshold": None if threshold is None else float(threshold),
                    "verdict": verdict, "label": "anomalous" if s.label == ANOMALOUS else "good",
                    "defect": s.defect_type})
    return out


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, layout: str | None = None,
                 category: str | None = None, teacher_weights: str | Path | None = None, batch_size: int = 16,
                 device: str = "cpu", progress: bool = False, overlays_dir: str | Path | None = None,
                 skip_bad_images: bool = False, force: bool = False) -> dict[str, Any]:
    """Evaluate a run directory on a data set (default: the one it was trained on).

    The run's noise manifest is re-applied, so injected training images are not test images
    (unless the run used ``overlap``). Adds ``f1_at_threshold`` with the run's threshold.
    ``skip_bad_images``: test images that cannot be decoded are left out and listed in
    ``skipped_images`` instead of stopping the evaluation.
    """
    from . import checkpoint as ckpt
    from .data import NoiseManifest, read_dataset
    config = ckpt.read_config(run_dir)
    d = config["data"]
    model = ckpt.load_checkpoint(run_dir, teacher_weights=teacher_weights, device=device)
    split = read_dataset(data if data is not None else d["root"], layout=layout or d["layout"],
                         category=category if category is not None else d["category"])
    manifest_path = Path(run_dir) / d.get("noise_manifest", ckpt.MANIFEST_FILE)
    if not manifest_path.is_file():
        raise ckpt.CheckpointError(f"checkpoint {run_dir} is missing its noise manifest {manifest_path.name}")
    manifest = NoiseManifest.load(manifest_path)
    split = manifest.apply(split)
    if skip_bad_images:
        from .data.readers import drop_unreadable
        split = drop_unreadable(split, parts=("test",))
    amap = config["model"].get("anomaly_map", {})
    threshold = ckpt.load_threshold(run_dir) if (Path(run_dir) / ckpt.SCORES_FILE).is_file() else None
    result = evaluate(model, split, batch_size=batch_size, device=device, color=d.get("color"),
                      mode=amap.get("mode", "add"), sigma=amap.get("sigma", 4.0), progress=progress,
                      overlays_dir=overlays_dir, n_injected=len(manifest.injected), threshold=threshold,
                      force=force)
    result["checkpoint"] = str(run_dir)
    result["data"] = split.name
    if skip_bad_images:
        result["skipped_images"] = split.skipped
    return result


def score_engine_dataset(engine, dataset, batch_size: int = 16, progress: bool = False,
                         desc: str = "scoring") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`score_dataset` through a built engine: each test image is decoded to a uint8 frame
    the way evaluation reads it (``dataset``'s decoder and colour) and scored by ``engine.score``,
    so the engine's own resize, normalisation and network produce the maps (the engine's model
    resolution). Masks come from ``dataset`` (resized as eval --checkpoint resizes them)."""
    from tqdm.auto import tqdm
    n = len(dataset)
    h, w = engine.image_size
    maps = np.empty((n, h, w), dtype=np.float32)
    scores = np.empty(n, dtype=np.float64)
    masks = np.empty((n, h, w), dtype=np.uint8) if dataset.with_masks else None
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            frames = []
            for i in range(start, stop):
                image, mask = dataset._load(i)  # uint8 (h, w, 3) at the file's size; mask at the model size
                frames.append(image)
                if masks is not None:
                    masks[i] = mask > 0.5
            r = engine.score(frames)  # a list: test images may differ in size, as camera frames do
            maps[start:stop] = r.maps
            scores[start:stop] = r.scores
            bar.update(stop - start)
    return maps, scores, masks


def evaluate_engine(engine_dir: str | Path, data: str | Path | None = None, layout: str | None = None,
                    category: str | None = None, batch_size: int = 16, progress: bool = False,
                    overlays_dir: str | Path | None = None, skip_bad_images: bool = False, force: bool = False,
                    **engine_options: Any) -> dict[str, Any]:
    """Evaluate a built engine directory on a labelled test set, as :func:`evaluate_run` evaluates
    a checkpoint: the same metrics, per-image records (verdicts with the engine's threshold),
    JSON keys and overlays, with every test image scored by ``cdd_engine.load(engine_dir).score``
    from its uint8 pixels.

    When the run directory the engine was built from (engine.json ``source_checkpoint.path``) is
    still here, its data set, layout, category, colour and noise manifest are used as
    evaluate_run uses them (injected training images are not test images); otherwise ``data``
    is required, the layout defaults to "mvtec", the colour is detected from the training images
    and no manifest is applied (``noise_manifest`` None in the result says so).

    ``engine_options`` go to :class:`cdd_engine.Engine` (num_threads, runtime, device, ...).

    Raises:
        EngineFormatError: ``engine_dir`` is not a readable engine directory.
        ValueError: no ``data`` and no run directory to take it from; a test set without both classes.
    """
    from . import checkpoint as ckpt
    from .data import ImageDataset, NoiseManifest, detect_color, read_dataset
    from .runtime.engine import load
    engine = load(engine_dir, **engine_options)
    source = engine.manifest.get("source_checkpoint")
    run_dir = source.get("path") if isinstance(source, dict) else None
    config = None
    if run_dir and (Path(run_dir) / ckpt.CONFIG_FILE).is_file():
        config = ckpt.read_config(run_dir)
    d = config["data"] if config else {}
    if data is None and not d:
        raise ValueError(f"engine {engine_dir}: its run directory ({run_dir or 'none recorded'}) is not here to "
                         f"say which data set it was trained on; pass --data")
    split = read_dataset(data if data is not None else d["root"], layout=layout or d.get("layout", "mvtec"),
                         category=category if category is not None else d.get("category"))
    manifest_path = None
    n_injected = None
    if config is not None:
        manifest_path = Path(run_dir) / d.get("noise_manifest", ckpt.MANIFEST_FILE)
        if manifest_path.is_file():
            manifest = NoiseManifest.load(manifest_path)
            split = manifest.apply(split)
            n_injected = len(manifest.injected)
        else:
            manifest_path = None
    if skip_bad_images:
        from .data.readers import drop_unreadable
        split = drop_unreadable(split, parts=("test",))
    test, has_masks = _check_test_set(split)
    color = d.get("color") or detect_color(split.train if split.train else test)
    mean, std = engine.manifest["input"]["mean"], engine.manifest["input"]["std"]
    dataset = ImageDataset(test, engine.image_size, mean, std, color=color, with_masks=has_masks, cache=False)
    if overlays_dir is not None:  # refused before scoring, as evaluate does
        from .visualize import check_eval_overlays
        check_eval_overlays(overlays_dir, test, force=force)
    t0 = time.perf_counter()
    maps, scores, masks = score_engine_dataset(engine, dataset, batch_size, progress, "evaluating")
    seconds = time.perf_counter() - t0
    result = _metrics(split, dataset, maps, scores, masks, seconds, n_injected, engine.threshold, overlays_dir,
                      mean, std)
    result.update({"engine": str(engine_dir), "backend": engine.backend_name, "precision": engine.precision,
                   "runtime": str(engine.runtime), "checkpoint": run_dir, "data": split.name,
                   "noise_manifest": str(manifest_path) if manifest_path else None})
    if skip_bad_images:
        result["skipped_images"] = split.skipped
    return result
