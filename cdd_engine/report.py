"""Contamination report: which *training* images look defective.

In FUAD nobody labelled the training folder. After training, every training image has an
anomaly score from the deployed student (CDD's global student never learned the training
defects, so defective training images keep high scores); ``train_scores.json`` holds them.
The report ranks them, flags those above the checkpoint's threshold, and draws heat-map
overlays of the most suspicious ones, so an engineer can find and remove defects hiding in
the training data.

Outputs (in ``out_dir``, default ``<run_dir>/report``): ``contamination.csv`` (rank, path, score,
above_threshold, injected), ``contamination.json`` (the same plus a summary), and
``overlays/<rank>_<folders>-<stem>.png`` (labelled [image | heat map] pictures with score, threshold
and verdict, one colour scale for all, the folders kept so equal file names never collide) and
``overlays/contact_sheet.png`` (all of them on one picture). Files this tool did not write are
never overwritten (docs in :func:`cdd_engine.visualize.claim_outputs`).
When the run injected known defects (the FUAD noise protocol, ``injected`` provenance), the
summary gives the precision of the top-ranked images at finding them.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .visualize import CONTACT_SHEET, claim_outputs, record_outputs
from .threshold import is_anomalous


def ranked_training_scores(run_dir: str | Path) -> tuple[list[dict[str, Any]], float]:
    """train_scores.json -> (entries sorted by decreasing score with a 1-based "rank", threshold)."""
    path = Path(run_dir) / ckpt.SCORES_FILE
    if not path.is_file():
        raise ckpt.CheckpointError(f"{run_dir} has no {ckpt.SCORES_FILE}: training did not finish, so there are "
                                   f"no training scores to report")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(d["threshold"])
        entries = [{"path": str(e["path"]), "score": float(e["score"]), "injected": e.get("injected")}
                   for e in d["scores"]]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{path} is not a valid training-scores file ({e!r})") from e
    if not entries:
        raise ckpt.CheckpointError(f"{path} lists no training images")
    order = np.argsort(-np.array([e["score"] for e in entries]), kind="stable")
    ranked = []
    for r, i in enumerate(order.tolist(), start=1):
        e = entries[i]
        ranked.append({"rank": r, "path": e["path"], "score": e["score"], "above_threshold": is_anomalous(e["score"], threshold),
                       "injected": e["injected"]})
    return ranked, threshold


def precision_at(ranked: list[dict[str, Any]], n: int) -> float:
    """Share of known-injected images among the n top-ranked (NaN when provenance is unknown)."""
    if n <= 0 or any(e["injected"] is None for e in ranked):
        return float("nan")
    top = ranked[:n]
    return sum(bool(e["injected"]) for e in top) / len(top)


def _summary(ranked: list[dict[str, Any]], threshold: float, top: int) -> dict[str, Any]:
    n_flagged = sum(e["above_threshold"] for e in ranked)
    known = all(e["injected"] is not None for e in ranked)
    n_inj = sum(bool(e["injected"]) for e in ranked) if known else None
    s: dict[str, Any] = {"n_train": len(ranked), "threshold": threshold, "n_above_threshold": n_flagged,
                         "n_injected_known": n_inj}
    if known and n_inj:
        s["precision_at_n_injected"] = precision_at(ranked, n_inj)
        s[f"precision_at_top{top}"] = precision_at(ranked, top)
        flagged = [e for e in ranked if e["above_threshold"]]
        s["precision_above_threshold"] = (sum(bool(e["injected"]) for e in flagged) / len(flagged)
                                          if flagged else float("nan"))
        s["recall_above_threshold"] = sum(bool(e["injected"]) for e in flagged) / n_inj
    return s


def overlay_name(entry: dict[str, Any]) -> str:
    """``<rank>_<folders>-<stem>.png``: sorted by rank, and the folders kept (issue 11 item 2)."""
    p = Path(entry["path"])
    return f"{entry['rank']:04d}_" + "-".join([*p.parent.parts, p.stem]) + ".png"


@torch.no_grad()
def _overlays(run_dir: Path, config: dict, entries: list[dict[str, Any]], out_dir: Path, data_root: Path,
              device: str, teacher_weights: str | None, threshold: float, n_train: int, batch_size: int = 8
              ) -> list[Path]:
    from .anomaly_map import anomaly_map
    from .data import ImageDataset, Sample
    from .data.samples import UNKNOWN
    from .visualize import denormalize, format_number, shared_scale, write_overlay_set

    names = [overlay_name(e) for e in entries]
    model = ckpt.load_checkpoint(run_dir, teacher_weights, device)
    am = config["model"].get("anomaly_map", {})
    samples = [Sample(str(data_root / e["path"]), UNKNOWN, None, "unknown") for e in entries]
    mean, std = model.normalization
    ds = ImageDataset(samples, model.image_size, mean, std, color=config["data"].get("color", "rgb"))
    images, maps = [], []
    for i in range(0, len(ds), batch_size):
        x = torch.stack([ds[j]["image"] for j in range(i, min(i + batch_size, len(ds)))])
        t, s = model(x.to(device))
        m, _ = anomaly_map(t, s, model.image_size, am.get("mode", "add"), am.get("sigma", 4.0))
        maps.append(m.float().cpu().numpy())
        images += [denormalize(xi.numpy(), mean, std) for xi in x]
    maps_np = np.concatenate(maps)
    vmin, vmax = shared_scale(list(maps_np), threshold)
    n = len(entries)
    note = (f"Colour scale {format_number(vmin, 3)} to {format_number(vmax, 3)} (anomaly-map value), shared by the {n} "
            f"highest-scoring of {n_train} training images drawn in this report.")
    truth = {None: None, True: ("injected defect", "injected"), False: ("clean (known)", "clean")}
    known = [truth[None if e["injected"] is None else bool(e["injected"])] or (None, None) for e in entries]
    items = ({"image": img, "map": m, "name": f"#{e['rank']} {e['path']}", "score": e["score"], "truth": k[0],
              "tag": k[1], "short": e["path"]}
             for e, img, m, k in zip(entries, images, maps_np, known))
    return write_overlay_set(out_dir, names, items, n, threshold=threshold, vmin=vmin, vmax=vmax, scale_note=note,
                             sheet_title=f"report: the {n} most suspicious of {n_train} training images",
                             worst_n=n, force=True)


def contamination_report(run_dir: str | Path, out_dir: str | Path | None = None, top: int = 16,
                         data: str | Path | None = None, device: str = "cpu",
                         teacher_weights: str | Path | None = None, overlays: bool = True,
                         force: bool = False) -> dict[str, Any]:
    """Write the ranked list (CSV + JSON) and overlays of the ``top`` most suspicious training images.

    Args:
        run_dir: a finished run directory (needs train_scores.json).
        out_dir: where to write (default ``<run_dir>/report``).
        top: number of overlays (and the k of "precision at top k").
        data: the data set root, if it moved since training (paths are relative to it).
        force: overwrite files in ``out_dir`` (and its ``overlays``) that this tool did not write;
            without it such a file stops the report before anything is written.
    Returns the JSON written (summary + ranked list).
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be an int >= 1, got {top!r}")
    run_dir = Path(run_dir)
    config = ckpt.read_config(run_dir)
    ranked, threshold = ranked_training_scores(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    lists = ["contamination.csv", "contamination.json"]
    # before anything is written: a rerun replaces its own files, never a user's
    claim_outputs(out, lists, force)
    if overlays:
        claim_outputs(out / "overlays", [overlay_name(e) for e in ranked[:top]] + [CONTACT_SHEET], force)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "contamination.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["rank", "path", "score", "above_threshold", "injected"])
        w.writeheader()
        for e in ranked:
            w.writerow({**e, "injected": "" if e["injected"] is None else int(bool(e["injected"]))})
    summary = _summary(ranked, threshold, min(top, len(ranked)))
    files: list[str] = []
    if overlays:
        root = Path(data) if data is not None else Path(config["data"]["root"])
        if not root.is_dir():
            raise FileNotFoundError(f"data set root {root} (recorded at training time) does not exist; pass "
                                    f"data=DIR (--data DIR) where the training images are now")
        files = [str(p.relative_to(out)) for p in
                 _overlays(run_dir, config, ranked[:top], out / "overlays", root, device,
                           None if teacher_weights is None else str(teacher_weights), threshold, len(ranked))]
    result = {"run_dir": str(run_dir), "method": config.get("method"), "summary": summary,
              "overlays": files, "contact_sheet": f"overlays/{CONTACT_SHEET}" if files else None, "ranked": ranked}
    (out / "contamination.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    record_outputs(out, lists)
    return result
