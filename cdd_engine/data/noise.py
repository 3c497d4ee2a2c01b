"""The noisy (contaminated) training protocol of fully unsupervised AD (SoftPatch and successors).

n = floor(noise_ratio * len(split.train)) anomalous *test* images, drawn with a seed, are
moved into the training set with label -1 (the learner must not know they are anomalous)
and leave the test set, unless overlap=True, which keeps them in the test set as well (the
"overlap" setting, where the model is evaluated on the very defects it trained on).

The draw is recorded in a `NoiseManifest` (paths relative to the dataset root) so that
evaluation re-applies exactly the same contamination to a freshly read split.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .samples import ANOMALOUS, UNKNOWN, DatasetSplit, Sample

MANIFEST_FORMAT = 1
_EPS = 1e-9  # guards floor() against binary float error: 0.29 * 100 == 28.999999999999996


def _n_noisy(noise_ratio: float, n_train: int) -> int:
    return int(math.floor(noise_ratio * n_train + _EPS))


def _check_ratio(noise_ratio) -> float:
    if isinstance(noise_ratio, bool) or not isinstance(noise_ratio, (int, float, np.floating, np.integer)):
        raise TypeError(f"noise_ratio must be a number, got {type(noise_ratio).__name__}")
    r = float(noise_ratio)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"noise_ratio must be a finite number >= 0, got {noise_ratio!r}")
    return r


def _rel(path: str, root: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _contaminate(split: DatasetSplit, chosen: list[Sample], overlap: bool) -> DatasetSplit:
    """The split with `chosen` (anomalous test samples) appended to train as unlabelled.

    The name stays the same (the manifest, saved beside the checkpoint, says what was done)."""
    injected = [Sample(s.path, UNKNOWN, None, s.defect_type) for s in chosen]
    chosen_paths = {s.path for s in chosen}
    test = list(split.test) if overlap else [s for s in split.test if s.path not in chosen_paths]
    return DatasetSplit(split.name, split.root, list(split.train) + injected, test)


@dataclass
class NoiseManifest:
    """Which test anomalies were injected into the training set, and with what settings.

    injected: paths relative to the dataset root (posix separators), in injection order.
    """

    noise_ratio: float
    seed: int
    overlap: bool
    injected: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, "noise_ratio": float(self.noise_ratio), "seed": int(self.seed),
                "overlap": bool(self.overlap), "injected": list(self.injected)}

    @classmethod
    def from_json(cls, d: dict) -> "NoiseManifest":
        if not isinstance(d, dict):
            raise TypeError(f"a noise manifest is a JSON object, got {type(d).__name__}")
        missing = [k for k in ("noise_ratio", "seed", "overlap", "injected") if k not in d]
        if missing:
            raise ValueError(f"noise manifest is missing {', '.join(missing)}")
        if d.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise ValueError(f"noise manifest format {d.get('format')!r} is not supported "
                             f"(this version reads format {MANIFEST_FORMAT})")
        injected = d["injected"]
        if not isinstance(injected, list) or not all(isinstance(p, str) for p in injected):
            raise ValueError("noise manifest 'injected' must be a list of relative paths")
        if len(set(injected)) != len(injected):
            raise ValueError("noise manifest 'injected' lists a path twice")
        if not isinstance(d["seed"], int) or isinstance(d["seed"], bool):
            raise ValueError(f"noise manifest 'seed' must be an int, got {d['seed']!r}")
        if not isinstance(d["overlap"], bool):
            raise ValueError(f"noise manifest 'overlap' must be true/false, got {d['overlap']!r}")
        return cls(_check_ratio(d["noise_ratio"]), d["seed"], d["overlap"], list(injected))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NoiseManifest":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"noise manifest {path} is not valid JSON: {exc}") from None
        return cls.from_json(d)

    def apply(self, split: DatasetSplit) -> DatasetSplit:
        """Re-apply this contamination to a freshly read split (what inject_noise returned).

        Raises ValueError if a listed file is not an anomalous image of split.test, or if
        the count does not match noise_ratio for this training set (another data set).
        """
        expected = _n_noisy(self.noise_ratio, len(split.train))
        if expected != len(self.injected):
            raise ValueError(f"noise manifest lists {len(self.injected)} injected images but noise_ratio "
                             f"{self.noise_ratio} of {len(split.train)} training images of {split.name} "
                             f"is {expected}: the manifest was made for another data set")
        by_rel = {_rel(s.path, split.root): s for s in split.test}
        chosen = []
        for rel in self.injected:
            s = by_rel.get(rel)
            if s is None:
                raise ValueError(f"noise manifest lists {rel!r}, which is not in the test set of "
                                 f"{split.name} (root {split.root})")
            if s.label != ANOMALOUS:
                raise ValueError(f"noise manifest lists {rel!r}, which is not an anomalous test image "
                                 f"(label {s.label}) in {split.name}")
            chosen.append(s)
        return _contaminate(split, chosen, self.overlap)


def inject_noise(split: DatasetSplit, noise_ratio: float, seed: int,
                 overlap: bool = False) -> tuple[DatasetSplit, NoiseManifest]:
    """Contaminate the training set with floor(noise_ratio * len(split.train)) test anomalies.

    The anomalies are drawn without replacement by numpy's default_rng(seed) from the
    anomalous test samples in their listed order; they are appended to train with label -1
    and mask None (defect_type kept as provenance) and removed from test unless overlap.
    ratio 0 returns an unchanged copy and an empty manifest. Raises ValueError if more
    images are needed than the test set has anomalies.
    """
    r = _check_ratio(noise_ratio)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    anomalous = [s for s in split.test if s.label == ANOMALOUS]
    n = _n_noisy(r, len(split.train))
    if n > len(anomalous):
        largest = len(anomalous) / len(split.train) if split.train else 0.0
        raise ValueError(f"noise_ratio {r} of {len(split.train)} training images needs {n} anomalous test "
                         f"images but {split.name} has only {len(anomalous)}; the largest possible "
                         f"ratio is {largest:.4f}")
    order = np.random.default_rng(seed).permutation(len(anomalous))[:n]
    chosen = [anomalous[i] for i in order.tolist()]
    manifest = NoiseManifest(r, seed, bool(overlap), [_rel(s.path, split.root) for s in chosen])
    return _contaminate(split, chosen, bool(overlap)), manifest
