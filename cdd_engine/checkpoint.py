"""Checkpoints: a run directory of safetensors + JSON (docs/checkpoint_format.md). Never pickle.

Layout of a run directory::

    config.json                  format name/version, package version, model, method, data,
                                 training options, seeds, epoch, timings, sha256 of every
                                 tensor/state file (written last: it commits an epoch)
    student.safetensors          the deployed student (OCBE + decoder)
    domain_students.safetensors  other trained students by name (CDD), when there are any
    teacher.safetensors          only when the teacher has random weights (no other source)
    noise_manifest.json          which test anomalies were injected into training (FUAD)
    train_scores.json            per-image training scores and the threshold derived from them
    metrics.json                 evaluation results (after evaluation)
    state/                       optimizer.safetensors/.json, rng.safetensors/.json (resume)

Every file named in ``config.json["files"]`` is checked against its recorded sha256 before
it is read, so a truncated, corrupt or swapped file is a :class:`CheckpointError`, never a
silently different model.
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import hashed_dir, limits
from .anomaly_map import MODES, TRUNCATE
from .models import RDModel, Student, WeightsError, build_teacher
from .models.teachers import RANDOM
from .version import __version__

FORMAT = "cdd-engine-checkpoint"
FORMAT_VERSION = 1

CONFIG_FILE = "config.json"
STUDENT_FILE = "student.safetensors"
DOMAIN_STUDENTS_FILE = "domain_students.safetensors"
TEACHER_FILE = "teacher.safetensors"
MANIFEST_FILE = "noise_manifest.json"
SCORES_FILE = "train_scores.json"
METRICS_FILE = "metrics.json"
STATE_DIR = "state"
OPTIMIZER_TENSORS = f"{STATE_DIR}/optimizer.safetensors"
OPTIMIZER_JSON = f"{STATE_DIR}/optimizer.json"
RNG_TENSORS = f"{STATE_DIR}/rng.safetensors"
RNG_JSON = f"{STATE_DIR}/rng.json"
REQUIRED_KEYS = ("model", "method", "data", "training", "epoch", "files")


class CheckpointError(RuntimeError):
    """A run directory is missing, corrupt, of another format version, or does not fit."""


# ----------------------------------------------------------------------------- file helpers
# Hashing, atomic writes, checked reads and the version upgrade path are cdd_engine/hashed_dir.py,
# shared with the engine format. Checkpoint records are "sha256:<hex>" strings.
def _sha256(data: bytes) -> str:
    return hashed_dir.digest_id(hashed_dir.sha256_bytes(data))


# Upgrade path of config.json: register ``@MIGRATIONS.register(N)`` functions that turn a
# version-N config into version N+1 when FORMAT_VERSION grows; read_config applies them.
MIGRATIONS = hashed_dir.Migrations(FORMAT, FORMAT_VERSION, error=CheckpointError)


def write_json(path: str | Path, obj: Any) -> str:
    """Atomically write ``obj`` as indented JSON; returns its sha256 id."""
    data = (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")
    hashed_dir.atomic_write(path, data)
    return _sha256(data)


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                  ) -> str:
    """Atomically write a safetensors file; returns its sha256 id."""
    from safetensors.torch import save
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    hashed_dir.atomic_write(path, data)
    return _sha256(data)


def _files(run_dir: Path, config: dict) -> dict:
    files = config.get("files", {})
    if not isinstance(files, dict):
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: 'files' must be an object {{name: 'sha256:<hex>'}}, "
                              f"got {type(files).__name__}")
    return files


def _read_bytes(run_dir: Path, name: str, config: dict) -> bytes:
    """A listed file's bytes, checked against config.json's record before they are parsed."""
    return hashed_dir.read_listed(run_dir, _files(run_dir, config), name, manifest=CONFIG_FILE, error=CheckpointError)


def verify_checkpoint(run_dir: str | Path, config: dict | None = None) -> dict:
    """Check every file config.json lists (present, regular, recorded sha256); returns the config."""
    run_dir = Path(run_dir)
    config = read_config(run_dir) if config is None else config
    hashed_dir.verify_files(run_dir, _files(run_dir, config), manifest=CONFIG_FILE, error=CheckpointError)
    return config


def read_tensors(run_dir: str | Path, name: str, config: dict) -> dict[str, torch.Tensor]:
    """Read a hash-checked safetensors file of a run directory."""
    from safetensors.torch import load
    data = _read_bytes(Path(run_dir), name, config)
    try:
        return load(data)
    except Exception as e:  # SafetensorError: truncated header, bad offsets, ...
        raise CheckpointError(f"checkpoint {run_dir}: {name} is not a readable safetensors file ({e})") from e


def read_state_json(run_dir: str | Path, name: str, config: dict) -> Any:
    try:
        return json.loads(_read_bytes(Path(run_dir), name, config).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {run_dir}: {name} is not valid JSON ({e})") from e


def _load_module(module: nn.Module, state: dict[str, torch.Tensor], what: str, run_dir: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing/unexpected keys, mismatched shapes
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:4]) if len(lines) > 1 else lines[0]
        raise CheckpointError(f"checkpoint {run_dir}: {what} does not fit the model recorded in "
                              f"config.json: {detail}") from e


# ----------------------------------------------------------------------------- config
def read_config(run_dir: str | Path) -> dict:
    """config.json of a run directory, checked for format name, version and required keys."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"checkpoint directory does not exist: {run_dir}")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a cdd-engine checkpoint: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON and huge integers
        raise CheckpointError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{path} is not a cdd-engine checkpoint config (format {got!r}, expected {FORMAT!r})")
    # an older version is upgraded by the registered migrations; a newer one is refused
    config = MIGRATIONS.upgrade(config, what=str(path),
                                newer_hint=f"it was written by a newer cdd-engine than this {__version__}: upgrade")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    problems = model_config_problems(config["model"])
    if problems:
        raise CheckpointError(f"{path}: invalid model settings: " + "; ".join(problems))
    return config


def model_config_problems(m: Any) -> list[str]:
    """What is wrong with config.json's "model" section, as rule sentences (the limits of
    cdd_engine/limits.py): checked where config.json is read, so nonsense never reaches torch."""
    if not isinstance(m, dict):
        return [f"'model' must be an object, got {type(m).__name__}"]
    out = []
    for key in ("backbone", "teacher_weights_id", "image_size", "normalization", "student"):
        if key not in m:
            out.append(f"model.{key} is missing")
    if "image_size" in m:
        from .training.config import IMAGE_SIZE_MULTIPLE, IMAGE_SIZE_RULE  # here: training imports this module

        problem = limits.image_size_problem(m["image_size"])
        if problem:
            out.append("model." + problem)
        elif any(v % IMAGE_SIZE_MULTIPLE for v in m["image_size"]):
            out.append(f"model.image_size sides must be {IMAGE_SIZE_RULE}, got {m['image_size']!r}")
    norm = m.get("normalization")
    if "normalization" in m:
        if not isinstance(norm, dict):
            out.append(f"model.normalization must be {{'mean': [...], 'std': [...]}}, got {norm!r}")
        else:
            out += ["model." + p for p in limits.normalization_problems(norm.get("mean"), norm.get("std"))]
    s = m.get("student")
    if "student" in m:
        ch = s.get("channels") if isinstance(s, dict) else None
        if not isinstance(ch, list) or len(ch) != 3 or not all(limits.is_int(c) and 1 <= c <= 65536 for c in ch):
            out.append(f"model.student.channels must be 3 integers in [1, 65536], got {ch!r}")
    am = m.get("anomaly_map", {})
    if not isinstance(am, dict):
        out.append(f"model.anomaly_map must be an object, got {am!r}")
    else:
        if am.get("mode", "add") not in MODES:
            out.append(f"model.anomaly_map.mode must be one of {MODES}, got {am.get('mode')!r}")
        sigma = am.get("sigma", 0.0)
        # 0 means no blur (training allows it; an engine needs a blur, see build); any other value
        # must give a radius within the shared limit, as in every anomaly-map implementation
        if not limits.is_number(sigma) or sigma < 0 or limits.blur_radius(sigma, TRUNCATE) > limits.MAX_BLUR_RADIUS:
            out.append(f"model.anomaly_map.sigma must be 0 (no blur) or a finite number > 0 whose blur radius "
                       f"floor({TRUNCATE:g} * sigma + 0.5) is at most {limits.MAX_BLUR_RADIUS} (MAX_BLUR_RADIUS), "
                       f"got {sigma!r}")
    return out


def model_config(model: RDModel, teacher_weights_path: str | None, map_mode: str, sigma: float,
                 student_config: dict) -> dict:
    """The "model" section of config.json."""
    return {
        "backbone": model.backbone,
        "teacher_weights_id": model.teacher_weights_id,
        "teacher_weights_path": teacher_weights_path,
        "image_size": list(model.image_size),
        "normalization": {"mean": list(model.normalization[0]), "std": list(model.normalization[1])},
        "student": student_config,
        "anomaly_map": {"mode": map_mode, "sigma": sigma},
    }


# ----------------------------------------------------------------------------- optimiser / RNG state
def optimizer_state(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimiser state dicts split into tensors (safetensors) and everything else (JSON)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        state_meta: dict[str, dict] = {}
        for pid, st in sd["state"].items():
            entry = state_meta.setdefault(str(pid), {})
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{name}/{pid}/{k}"] = v
                    entry[k] = {"tensor": f"{name}/{pid}/{k}"}
                else:
                    entry[k] = {"value": v}
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
        meta[name] = {"state": state_meta, "param_groups": groups}
    return tensors, meta


def load_optimizer_state(optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, torch.Tensor],
                         meta: dict, run_dir: Path) -> None:
    for name, opt in optimizers.items():
        if name not in meta:
            raise CheckpointError(f"checkpoint {run_dir}: no saved state for optimiser {name!r}")
        state = {}
        try:
            for pid, entry in meta[name]["state"].items():
                state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"])
                                   for k, v in entry.items()}
            groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g)
                      for g in meta[name]["param_groups"]]
            opt.load_state_dict({"state": state, "param_groups": groups})
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {run_dir}: optimiser state {name!r} does not fit ({e})") from e


def capture_rng(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    """RNG states of torch (CPU, CUDA), the batch-order generator, numpy and python ``random``."""
    tensors = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached)},
            "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss}}
    return tensors, meta


def restore_rng(generator: torch.Generator, tensors: dict[str, torch.Tensor], meta: dict, run_dir: Path) -> None:
    try:
        torch.set_rng_state(tensors["torch"])
        generator.set_state(tensors["generator"])
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        n = meta["numpy"]
        np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
        p = meta["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {run_dir}: saved random-number state is unusable ({e})") from e


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(run_dir: str | Path, config: dict, modules: dict[str, nn.Module],
                    optimizers: dict[str, torch.optim.Optimizer], generator: torch.Generator,
                    teacher: nn.Module | None = None) -> dict:
    """Write one epoch's checkpoint; ``config.json`` last, with the hashes of the other files.

    ``modules["student"]`` -> student.safetensors, other modules -> domain_students.safetensors
    as ``<name>.<param>``; ``teacher`` (random-weight teachers only) is written once.
    Returns the config as written.
    """
    run_dir = Path(run_dir)
    if "student" not in modules:
        raise ValueError(f"modules must contain the deployed 'student', got {sorted(modules)}")
    files = dict(config.get("files", {}))
    files[STUDENT_FILE] = write_tensors(run_dir / STUDENT_FILE, modules["student"].state_dict())
    others = {f"{name}.{k}": v for name, m in modules.items() if name != "student"
              for k, v in m.state_dict().items()}
    if others:
        files[DOMAIN_STUDENTS_FILE] = write_tensors(run_dir / DOMAIN_STUDENTS_FILE, others)
    if teacher is not None and TEACHER_FILE not in files:
        files[TEACHER_FILE] = write_tensors(run_dir / TEACHER_FILE, teacher.state_dict())
    opt_tensors, opt_meta = optimizer_state(optimizers)
    files[OPTIMIZER_TENSORS] = write_tensors(run_dir / OPTIMIZER_TENSORS, opt_tensors)
    files[OPTIMIZER_JSON] = write_json(run_dir / OPTIMIZER_JSON, opt_meta)
    rng_tensors, rng_meta = capture_rng(generator)
    files[RNG_TENSORS] = write_tensors(run_dir / RNG_TENSORS, rng_tensors)
    files[RNG_JSON] = write_json(run_dir / RNG_JSON, rng_meta)
    config = dict(config, format=FORMAT, format_version=FORMAT_VERSION, package_version=__version__, files=files)
    write_json(run_dir / CONFIG_FILE, config)
    return config


def load_training_state(run_dir: str | Path, config: dict, modules: dict[str, nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], generator: torch.Generator) -> None:
    """Restore students, optimisers and every RNG of a run directory (``--resume``)."""
    run_dir = Path(run_dir)
    _load_module(modules["student"], read_tensors(run_dir, STUDENT_FILE, config), STUDENT_FILE, run_dir)
    others = {n: m for n, m in modules.items() if n != "student"}
    if others:
        saved = read_tensors(run_dir, DOMAIN_STUDENTS_FILE, config)
        for name, m in others.items():
            prefix = name + "."
            _load_module(m, {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)},
                         f"{DOMAIN_STUDENTS_FILE} [{name}]", run_dir)
    load_optimizer_state(optimizers, read_tensors(run_dir, OPTIMIZER_TENSORS, config),
                         read_state_json(run_dir, OPTIMIZER_JSON, config), run_dir)
    restore_rng(generator, read_tensors(run_dir, RNG_TENSORS, config),
                read_state_json(run_dir, RNG_JSON, config), run_dir)


def load_teacher(run_dir: str | Path, config: dict, teacher_weights: str | Path | None = None) -> nn.Module:
    """The frozen teacher a run was trained with, checked against the recorded weights id."""
    run_dir = Path(run_dir)
    m = config["model"]
    backbone, want = m["backbone"], m["teacher_weights_id"]
    try:
        if want == RANDOM:
            teacher, _ = build_teacher(backbone, RANDOM)
            _load_module(teacher, read_tensors(run_dir, TEACHER_FILE, config), TEACHER_FILE, run_dir)
            return teacher
        path = teacher_weights
        if path is None and m.get("teacher_weights_path") and Path(m["teacher_weights_path"]).is_file():
            path = m["teacher_weights_path"]
        teacher, got = build_teacher(backbone, path)
    except (WeightsError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild the teacher of {run_dir}: {e}") from e
    if got != want:
        raise CheckpointError(
            f"teacher weights of {run_dir} differ from those it was trained with: recorded {want}, "
            f"got {got} from {path or 'the default source'}; pass the original file "
            f"(teacher_weights=PATH / --teacher-weights PATH)")
    return teacher


def load_checkpoint(run_dir: str | Path, teacher_weights: str | Path | None = None,
                    device: str | torch.device = "cpu") -> RDModel:
    """Load a run directory -> :class:`RDModel` in eval mode on ``device``.

    ``forward(x)`` on normalised (B,3,H,W) images returns (teacher_feats, student_feats);
    ``model.image_size`` is (H, W), ``model.normalization`` ((mean), (std)).
    ``teacher_weights`` overrides where the teacher's weights are read from (their hash must
    still equal the recorded one). Raises CheckpointError on any missing/corrupt/mismatched part.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    m = config["model"]
    try:
        s = m["student"]
        student = Student(tuple(s["channels"]), width_mult=s["width_mult"],
                          bottleneck_blocks=s["bottleneck_blocks"], decoder_blocks=tuple(s["decoder_blocks"]))
        size = tuple(m["image_size"])
        norm = (tuple(m["normalization"]["mean"]), tuple(m["normalization"]["std"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: the model section is incomplete or invalid ({e!r})") from e
    teacher = load_teacher(run_dir, config, teacher_weights)
    if tuple(getattr(teacher, "stage_channels", ())) != tuple(s["channels"]):
        raise CheckpointError(f"checkpoint {run_dir}: teacher stage widths {teacher.stage_channels} differ from "
                              f"the student's recorded {tuple(s['channels'])}")
    _load_module(student, read_tensors(run_dir, STUDENT_FILE, config), STUDENT_FILE, run_dir)
    model = RDModel(teacher, student, m["backbone"], size, norm)
    model.teacher_weights_id = m["teacher_weights_id"]
    return model.to(device).eval()


def load_threshold(run_dir: str | Path) -> float:
    """Score threshold derived from the training scores (train_scores.json)."""
    path = Path(run_dir) / SCORES_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {SCORES_FILE} (training did not finish?)")
    try:
        t = json.loads(path.read_text(encoding="utf-8"))["threshold"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is invalid: {e!r}") from e
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise CheckpointError(f"{path}: threshold must be a finite number, got {t!r}")
    return float(t)
