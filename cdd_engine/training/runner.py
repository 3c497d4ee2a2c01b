"""The training driver shared by every method: data and FUAD contamination, model, feature
cache, the epoch loop with a checkpoint per epoch, resume, periodic and final evaluation,
training scores and the threshold."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import checkpoint as ckpt
from ..anomaly_map import anomaly_map
from ..threshold import threshold_from_scores as label_free_threshold
from ..models import build_rd_model, teacher_spec
from ..models.teachers import RANDOM
from .config import TrainConfig, config_differences
from .loop import TeacherFeatures, deterministic, seed_everything
from .methods import get_method

BOTTLENECK_BLOCKS = 3  # OCBE blocks of build_student (Student's default); recorded in config.json


def _log(config: TrainConfig, msg: str) -> None:
    if config.progress:
        from tqdm.auto import tqdm
        tqdm.write(msg)


def train(data: str | Path, out: str | Path, layout: str = "mvtec", category: str | None = None,
          method: str = "rd", backbone: str = "efficientnet_lite0", teacher_weights: str | Path | None = None,
          image_size: int = 256, epochs: int = TrainConfig.epochs, batch_size: int = 16, lr: float = 0.005,
          noise_ratio: float = 0.0, overlap: bool = False, seed: int = 0, eval_every: int = 0,
          resume: bool = False, device: str = "cpu", progress: bool = True, force: bool = False, **more: Any) -> Path:
    """Train a student on a data set and write a run directory (the checkpoint).

    Args mirror ``cdd-engine train`` (see :class:`TrainConfig` for ``**more``: ``noise_seed``,
    ``num_workers``, ``cache_features``, ``threshold_rule``, ``threshold_k`` (None: 3 for rd, 2 for cdd), ``map_mode``,
    ``sigma``, ``betas``, ``eval_batch_size``, ``deterministic``, ``method_options`` ...).
    ``noise_ratio`` > 0 applies the FUAD protocol: that fraction of |train| anomalous test
    images, drawn with the seed, join the training set unlabelled and leave the test set.
    ``out`` must be new, empty, or (``resume``) a run to continue; ``force`` writes into a
    non-empty folder anyway (a previous run's own files there are removed first).

    Returns the run directory: config.json, student.safetensors, noise_manifest.json,
    train_scores.json, metrics.json (when the data set has a labelled test set), state/.
    """
    unknown = sorted(set(more) - set(TrainConfig.option_names()))
    if unknown:
        raise TypeError(f"train() got unknown option(s) {unknown}; valid options: {TrainConfig.option_names()}")
    config = TrainConfig(data=str(data), out=str(out), layout=layout, category=category, method=method,
                         backbone=backbone, teacher_weights=None if teacher_weights is None else str(teacher_weights),
                         image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                         noise_ratio=noise_ratio, overlap=overlap, seed=seed, eval_every=eval_every,
                         resume=resume, device=device, progress=progress, **more)
    return run_training(config, force=force)


# What a run writes at the top of its directory (state/ holds only run files too).
RUN_FILES = (ckpt.CONFIG_FILE, ckpt.STUDENT_FILE, ckpt.DOMAIN_STUDENTS_FILE, ckpt.TEACHER_FILE, ckpt.MANIFEST_FILE,
             ckpt.SCORES_FILE, ckpt.METRICS_FILE, ckpt.STATE_DIR)


def _check_out(run_dir: Path, has_ckpt: bool, force: bool) -> None:
    """A new run goes into a new or empty folder: never over files the user owns, unless forced."""
    if os.path.lexists(run_dir) and not run_dir.is_dir():
        raise NotADirectoryError(f"--out {run_dir} is a file, not a directory")
    if has_ckpt and not force:
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume (resume=True) to continue "
                              f"it, --force (force=True) to replace it, or choose another --out")
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if entries and not force:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(f"--out {run_dir} is a non-empty folder that is not a run directory (it holds "
                              f"{shown}); training writes student.safetensors, metrics.json ... there: choose a "
                              f"new or empty folder, or pass --force (force=True) to write into it anyway")
    if force:  # a previous run's files must not mix with the new run's
        for name in RUN_FILES:
            p = run_dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif os.path.lexists(p):
                p.unlink()


def _prepare_run_dir(config: TrainConfig, force: bool = False) -> tuple[Path, dict | None]:
    run_dir = Path(config.out).expanduser().absolute()
    has_ckpt = (run_dir / ckpt.CONFIG_FILE).is_file()
    if config.resume:
        if not has_ckpt:
            raise FileNotFoundError(f"--resume: {run_dir} holds no checkpoint to resume (no {ckpt.CONFIG_FILE})")
        recorded = ckpt.read_config(run_dir)
        old = TrainConfig.from_json(recorded["training"])
        if config.threshold_k is None:  # no explicit k: keep the run's (runs before the per-method default recorded 3.0)
            config.threshold_k = old.threshold_k
        diffs = config_differences(old, config)
        if Path(old.data).absolute() != Path(config.data).absolute():
            diffs.insert(0, f"data: recorded {old.data!r}, requested {config.data!r}")
        if diffs:
            raise ValueError(f"--resume: the options differ from the run being resumed ({'; '.join(diffs)}); "
                             f"only {', '.join(sorted(('epochs', 'eval_every', 'device', 'num_workers')))} "
                             f"may change")
        if config.epochs < recorded["epoch"]:
            raise ValueError(f"--resume: the run already trained {recorded['epoch']} epochs, more than "
                             f"the {config.epochs} asked for")
        return run_dir, recorded
    _check_out(run_dir, has_ckpt, force)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, None


def _created_dirs(path: Path) -> list[Path]:
    """The folders ``path.mkdir(parents=True)`` would create, deepest first."""
    out = []
    while not os.path.lexists(path):
        out.append(path)
        path = path.parent
    return out


def _undo_new_run(run_dir: Path, before: set[str], created: list[Path]) -> None:
    """A new run that failed before its first checkpoint leaves nothing behind: the files it
    wrote are removed, and the folders it created (when now empty)."""
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():
        if p.name not in before:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    for d in created:
        try:
            d.rmdir()
        except OSError:
            break


def _load_split(config: TrainConfig, run_dir: Path, resuming: bool):
    from ..data import NoiseManifest, detect_color, inject_noise, read_dataset
    split = read_dataset(config.data, layout=config.layout, category=config.category)
    if config.skip_bad_images:  # unreadable files are listed in the run directory, not trained on
        from ..data.readers import SKIPPED_FILE, drop_unreadable
        split = drop_unreadable(split, run_dir / SKIPPED_FILE)
    if not split.train:
        raise ValueError(f"{split.name} has no training images")
    manifest_path = run_dir / ckpt.MANIFEST_FILE
    if resuming:
        if not manifest_path.is_file():
            raise ckpt.CheckpointError(f"checkpoint {run_dir} is missing {ckpt.MANIFEST_FILE}")
        manifest = NoiseManifest.load(manifest_path)
        split = manifest.apply(split)
    else:
        split, manifest = inject_noise(split, config.noise_ratio, config.effective_noise_seed, config.overlap)
        manifest.save(manifest_path)
    return split, manifest, detect_color(split.train)


def _use_cache(config: TrainConfig, model, n_images: int) -> bool:
    if config.cache_features != "auto":
        return config.cache_features == "yes"
    per_image = TeacherFeatures.bytes_per_image(model.teacher_features, model.image_size, config.device)
    return per_image * n_images <= config.feature_cache_gb * 2**30


def threshold_from_scores(scores: np.ndarray, rule: str = "median_mad", k: float = 3.0) -> dict[str, float]:
    """The threshold record stored in ``train_scores.json``: the label-free threshold of
    :mod:`cdd_engine.threshold` (the one definition of the rules) plus, for ``median_mad``,
    the median and MAD it came from."""
    record = {"threshold": label_free_threshold(scores, rule, k)}
    if rule == "median_mad":
        s = np.asarray(scores, dtype=np.float64)
        med = float(np.median(s))
        record.update(median=med, mad=float(np.median(np.abs(s - med))))
    return record


def training_scores(model, features: TeacherFeatures, config: TrainConfig) -> np.ndarray:
    """Anomaly score (max of the blurred map, docs/anomaly_map.md) of every training image, in order."""
    model.eval()
    out = np.empty(len(features), dtype=np.float64)
    with torch.no_grad():
        for idx, feats in features.batches(None, config.eval_batch_size):
            _, scores = anomaly_map(feats, model.student(feats), model.image_size, config.map_mode, config.sigma)
            out[idx.numpy()] = scores.double().cpu().numpy()
    return out


def _write_train_scores(run_dir: Path, split, manifest, scores: np.ndarray, config: TrainConfig, epoch: int) -> float:
    k = config.effective_threshold_k
    rule = threshold_from_scores(scores, config.threshold_rule, k)
    injected = set(manifest.injected)
    root = Path(split.root)
    entries = []
    for s, v in zip(split.train, scores.tolist()):
        rel = Path(s.path).absolute().relative_to(root).as_posix() if Path(s.path).is_relative_to(root) else s.path
        entries.append({"path": rel, "score": v, "injected": rel in injected})
    ckpt.write_json(run_dir / ckpt.SCORES_FILE, {
        "epoch": epoch, "threshold": rule["threshold"],
        "rule": {"name": config.threshold_rule, "k": k, "k_source": "threshold_k" if config.threshold_k is not None
                 else f"default for method {config.method!r}",
                 **{k: v for k, v in rule.items() if k != "threshold"}},
        "note": "threshold from training scores only; 'injected' is provenance for reports, never used",
        "scores": entries})
    return rule["threshold"]


def run_training(config: TrainConfig, force: bool = False) -> Path:
    """Run (or resume) the training described by ``config``; returns the run directory.

    ``force``: start a new run in a non-empty ``config.out`` (see :func:`train`)."""
    method_cls = get_method(config.method)  # an announced-but-absent method fails before any work
    teacher_spec(config.backbone)
    out = Path(config.out).expanduser().absolute()
    created = _created_dirs(out)
    run_dir, recorded = _prepare_run_dir(config, force)
    if recorded is not None:
        return _run(config, method_cls, run_dir, recorded)
    before = {p.name for p in run_dir.iterdir()}  # the user's own files, when forced into a folder
    try:
        return _run(config, method_cls, run_dir, None)
    except BaseException:
        if not (run_dir / ckpt.CONFIG_FILE).is_file():  # no epoch committed: nothing to resume
            _undo_new_run(run_dir, before, created)
        raise


def _run(config: TrainConfig, method_cls, run_dir: Path, recorded: dict | None) -> Path:
    resuming = recorded is not None
    config.data = str(Path(config.data).expanduser().absolute())
    split, manifest, color = _load_split(config, run_dir, resuming)
    _log(config, f"{split.summary()} (+{len(manifest.injected)} injected into train)")

    from ..data import ImageDataset
    from ..evaluate import evaluate

    with deterministic(config.deterministic, config.device):
        generator = seed_everything(config.seed)
        model = build_rd_model(config.backbone, config.teacher_weights, config.image_size, seed=config.seed)
        random_teacher = model.teacher_weights_id == RANDOM
        if resuming and random_teacher:
            model.teacher = ckpt.load_teacher(run_dir, recorded)
        elif resuming and model.teacher_weights_id != recorded["model"]["teacher_weights_id"]:
            raise ckpt.CheckpointError(
                f"--resume: teacher weights differ from the run's (recorded "
                f"{recorded['model']['teacher_weights_id']}, got {model.teacher_weights_id})")
        model.to(config.device)
        mean, std = model.normalization
        dataset = ImageDataset(split.train, model.image_size, mean, std, color=color, cache=True)
        features = TeacherFeatures(model.teacher_features, dataset, config.batch_size, config.device,
                                   cache=_use_cache(config, model, len(dataset)), num_workers=config.num_workers,
                                   progress=config.progress)
        method_cfg = config
        if resuming:  # rebuilt as recorded (a default changed since must not change a resumed run)
            method_cfg = dataclasses.replace(config, method_options=method_cls.resumed_options(
                dict(config.method_options), dict(recorded.get("method_config") or {})))
        method = method_cls(method_cfg, model, features)
        modules, optimizers = method.modules(), method.optimizers()
        model.student = modules["student"]  # the deployed student is what evaluation scores
        spec = teacher_spec(config.backbone)
        student_cfg = {"class": "Student", "channels": list(model.teacher.stage_channels),
                       "width_mult": spec.width_mult, "bottleneck_blocks": BOTTLENECK_BLOCKS,
                       "decoder_blocks": list(spec.decoder_blocks)}
        timings: dict[str, Any] = {"feature_cache_s": features.cache_seconds, "epoch_s": [], "eval_s": 0.0}
        history: list[dict] = []
        start = 0
        if resuming:
            ckpt.load_training_state(run_dir, recorded, modules, optimizers, generator)
            start = int(recorded["epoch"])
            timings["epoch_s"] = list(recorded.get("timings", {}).get("epoch_s", []))
            history = list(recorded.get("history", []))
            _log(config, f"resuming {run_dir} after epoch {start}")
        base = {
            "model": ckpt.model_config(model, None if random_teacher else _teacher_path(config),
                                       config.map_mode, config.sigma, student_cfg),
            "method": config.method,
            "method_config": method.method_config(),
            "data": {"root": config.data, "layout": config.layout, "category": config.category,
                     "name": split.name, "color": color, "n_train": len(split.train),
                     "n_test": len(split.test), "n_injected": len(manifest.injected),
                     "noise_manifest": ckpt.MANIFEST_FILE},
            "training": config.to_json(),
            "seeds": {"seed": config.seed, "noise_seed": config.effective_noise_seed},
            "created": (recorded or {}).get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "files": dict((recorded or {}).get("files", {})),
        }
        written = recorded or {}
        for epoch in range(start, config.epochs):
            stats = method.train_epoch(epoch, generator, config.progress)
            timings["epoch_s"].append(stats["seconds"])
            entry = {"epoch": epoch + 1, **{k: v for k, v in stats.items() if k != "images"}}
            _log(config, f"epoch {epoch + 1}/{config.epochs}: loss {stats['loss']:.4f}, "
                         f"{stats.get('images_per_s', math.nan):.1f} img/s")
            if config.eval_every and (epoch + 1) % config.eval_every == 0 and epoch + 1 < config.epochs:
                t0 = time.perf_counter()
                entry["eval"] = _maybe_evaluate(evaluate, model, split, config, manifest)
                timings["eval_s"] += time.perf_counter() - t0
                model.train()
            history.append(entry)
            written = ckpt.save_checkpoint(
                run_dir, dict(base, epoch=epoch + 1, complete=False, history=history,
                              timings=dict(timings, train_s=sum(timings["epoch_s"]))),
                modules, optimizers, generator, teacher=model.teacher if random_teacher else None)
            base["files"] = written["files"]

        # final: training scores -> threshold, evaluation, config marked complete
        t0 = time.perf_counter()
        threshold = _write_train_scores(run_dir, split, manifest, training_scores(model, features, config),
                                        config, config.epochs)
        timings["train_scores_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = _maybe_evaluate(evaluate, model, split, config, manifest, threshold)
        timings["final_eval_s"] = time.perf_counter() - t0
        if metrics is not None:
            ckpt.write_json(run_dir / ckpt.METRICS_FILE, dict(metrics, epoch=config.epochs, history=[
                {"epoch": h["epoch"], **h["eval"]} for h in history if h.get("eval")]))
            _log(config, "final: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in
                                               ("image_auroc", "pixel_auroc", "aupro", "f1_max")
                                               if metrics[k] is not None))
        final = dict(written, epoch=config.epochs, complete=True, history=history,
                     timings=dict(timings, train_s=sum(timings["epoch_s"])))
        final["training"] = config.to_json()
        ckpt.write_json(run_dir / ckpt.CONFIG_FILE, final)
    return run_dir


def _teacher_path(config: TrainConfig) -> str | None:
    if config.teacher_weights is not None:
        return str(Path(config.teacher_weights).expanduser().absolute())
    from ..models.teachers import default_weights_path
    p = default_weights_path(config.backbone)
    return None if p is None else str(p)


def _maybe_evaluate(evaluate, model, split, config: TrainConfig, manifest, threshold: float | None = None
                    ) -> dict | None:
    """Evaluate on the test set when it has good and anomalous images (an unlabelled folder has none)."""
    labels = [s.label for s in split.test]
    if 0 not in labels or 1 not in labels:
        _log(config, f"no evaluation: the test set of {split.name} needs good and anomalous images")
        return None
    return evaluate(model, split, batch_size=config.eval_batch_size, device=config.device,
                    mode=config.map_mode, sigma=config.sigma, progress=config.progress,
                    n_injected=len(manifest.injected), threshold=threshold)
