"""Every option of a training run, in one dataclass shared by the CLI, :func:`cdd_engine.train`
and the checkpoint's ``config.json``."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..models.teachers import TEACHERS

LAYOUTS = ("mvtec", "visa", "folder")
MAP_MODES = ("add", "mul")
DEFAULT_EPOCHS = 30          # ~2 min per category at 256² on 2 cores with cached teacher features
DEFAULT_IMAGE_SIZE = 256
# The size rule of every backbone (efficientnet_lite0, resnet18, wide_resnet50_2): the teacher
# halves the input five times and the student's decoder doubles its 1/32 bottleneck back, so the
# teacher's and the student's feature maps agree in shape only for sides that are multiples of 32
# (measured for every side from 32 to 128 on all three: the multiples of 32 work; of the other
# sides only 32k-3 .. 32k-1 happen to run, with the scales off by a pixel; every other side fails
# with a shape mismatch once the work has started; tests/test_size_rule.py).
IMAGE_SIZE_MULTIPLE = 32
MIN_IMAGE_SIZE = 32
IMAGE_SIZE_RULE = f"a multiple of {IMAGE_SIZE_MULTIPLE}, at least {MIN_IMAGE_SIZE} (e.g. 64, 128, 256)"
THRESHOLD_RULES = ("median_mad", "quantile")
# k of median + k * 1.4826 * MAD when the run does not set threshold_k, by method. Measured on
# 48 demo runs (benchmarks/RESULTS.md, "Threshold from training scores"), mean test F1 at the
# threshold: RD 0.802 with k = 3 vs 0.798 with k = 2; CDD 0.601 with k = 3 vs 0.735 with k = 2
# (CDD's global student reproduces the teacher less closely on its own training images, so its
# training scores spread wider and 3 MADs land too high). Other methods: k = 3.
DEFAULT_THRESHOLD_K = {"rd": 3.0, "cdd": 2.0}
FALLBACK_THRESHOLD_K = 3.0
# Options that may differ when a run is resumed; every other option must equal the recorded one,
# or the resumed run would not be the run that was started.
RESUMABLE_CHANGES = frozenset({"epochs", "eval_every", "progress", "resume", "num_workers", "device",
                               "eval_batch_size", "skip_bad_images"})


def check_image_size(size: Any, name: str = "image_size") -> None:
    """Raise ValueError/TypeError unless ``size`` (an int or (H, W)) follows the size rule
    (:data:`IMAGE_SIZE_RULE`); the message states the rule. Checked before any work starts."""
    sides = list(size) if isinstance(size, (tuple, list)) else [size]
    if not sides or len(sides) > 2:
        raise ValueError(f"{name} must be one side or (H, W), got {size!r}")
    for v in sides:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        if v < MIN_IMAGE_SIZE or v % IMAGE_SIZE_MULTIPLE:
            raise ValueError(f"{name} must be >= {MIN_IMAGE_SIZE} and a multiple of {IMAGE_SIZE_MULTIPLE} "
                             f"(the backbones' feature maps only line up at such sides: {IMAGE_SIZE_RULE}), "
                             f"got {size!r}")


@dataclass
class TrainConfig:
    """Options of one training run.

    data/out: data set root and run directory (the checkpoint). Model: ``backbone`` (teacher),
    ``teacher_weights`` (file path, ``"random"`` for tests, or None for the backbone's default
    source), ``image_size`` (square side in pixels). Optimiser: Adam(lr, betas). FUAD protocol:
    ``noise_ratio`` of the training set size is drawn from the test anomalies with
    ``noise_seed`` (default: ``seed``) and moved into training; ``overlap`` keeps them in the
    test set as well. ``skip_bad_images``: leave out (and list in the run directory's
    ``skipped_images.json``) image files that cannot be decoded, instead of stopping at the first one.
    ``image_size`` follows :data:`IMAGE_SIZE_RULE`. ``cache_features``: "auto" keeps the frozen teacher's features of the
    training set in memory when they fit in ``feature_cache_gb`` (they never change, and the
    teacher is ~85 % of an epoch's time at 256² on CPU), "yes"/"no" force it.
    Threshold (train_scores.json): ``median_mad`` = median + k * 1.4826 * MAD of the training
    scores (robust to a minority of contaminated images), ``quantile`` = the k-quantile (0..1).
    ``threshold_k=None`` (default) means the method's measured default for ``median_mad``
    (:data:`DEFAULT_THRESHOLD_K`: 3 for rd, 2 for cdd; see :attr:`effective_threshold_k`); an
    explicit value always wins. ``quantile`` has no default q: it must be given.
    """

    data: str
    out: str
    layout: str = "mvtec"
    category: str | None = None
    method: str = "rd"
    backbone: str = "efficientnet_lite0"
    teacher_weights: str | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 16
    lr: float = 0.005
    betas: tuple[float, float] = (0.5, 0.999)
    noise_ratio: float = 0.0
    overlap: bool = False
    seed: int = 0
    noise_seed: int | None = None
    eval_every: int = 0
    eval_batch_size: int = 16
    resume: bool = False
    device: str = "cpu"
    progress: bool = True
    num_workers: int = 0
    deterministic: bool = True
    cache_features: str = "auto"
    feature_cache_gb: float = 2.0
    map_mode: str = "add"
    sigma: float = 4.0
    threshold_rule: str = "median_mad"
    threshold_k: float | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    skip_bad_images: bool = False

    def __post_init__(self) -> None:
        self.data = str(self.data)
        self.out = str(self.out)
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        self.validate()

    @property
    def effective_noise_seed(self) -> int:
        return self.seed if self.noise_seed is None else self.noise_seed

    @property
    def effective_threshold_k(self) -> float:
        """``threshold_k``, or for ``median_mad`` without one the method's default (rd 3, cdd 2)."""
        if self.threshold_k is not None:
            return float(self.threshold_k)
        self._need_explicit_k()
        return DEFAULT_THRESHOLD_K.get(self.method, FALLBACK_THRESHOLD_K)

    def _need_explicit_k(self) -> None:
        if self.threshold_rule != "median_mad":
            raise ValueError(f"threshold_rule {self.threshold_rule!r} needs threshold_k (the quantile q in "
                             f"[0, 1], e.g. 0.9 when ~10 % of the training images may be defective), got None")

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the option, what was expected and what was got."""
        def need_int(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")

        def need_float(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite number, got {v!r}")
            if v < lo or v > hi or (lo_open and v == lo):
                raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}], got {v}")

        def need_choice(name: str, choices) -> None:
            v = getattr(self, name)
            if v not in choices:
                raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")

        need_choice("layout", LAYOUTS)
        need_choice("backbone", sorted(TEACHERS))
        need_choice("map_mode", MAP_MODES)
        need_choice("cache_features", ("auto", "yes", "no"))
        need_choice("threshold_rule", THRESHOLD_RULES)
        if not isinstance(self.method, str) or not self.method:
            raise TypeError(f"method must be a name like 'rd', got {self.method!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            need_int(name, 1)
        check_image_size(self.image_size, "image_size")
        for name in ("seed", "eval_every", "num_workers"):
            need_int(name, 0)
        if self.noise_seed is not None:
            need_int("noise_seed", 0)
        need_float("lr", 0.0, lo_open=True)
        need_float("noise_ratio", 0.0)
        need_float("sigma", 0.0)
        need_float("feature_cache_gb", 0.0)
        if self.threshold_k is not None:
            need_float("threshold_k", 0.0, 1.0 if self.threshold_rule == "quantile" else math.inf)
        else:
            self._need_explicit_k()
        if (not isinstance(self.betas, tuple) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.teacher_weights is not None and not isinstance(self.teacher_weights, str):
            self.teacher_weights = str(self.teacher_weights)
        if self.category is not None and not isinstance(self.category, str):
            raise TypeError(f"category must be a name or None, got {self.category!r}")
        if not isinstance(self.method_options, dict):
            raise TypeError(f"method_options must be a dict, got {type(self.method_options).__name__}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def config_differences(old: TrainConfig, new: TrainConfig) -> list[str]:
    """Options that differ between a recorded run and a resume request (ignoring RESUMABLE_CHANGES)."""
    a, b = old.to_json(), new.to_json()
    return [f"{k}: recorded {a[k]!r}, requested {b[k]!r}" for k in a
            if k not in RESUMABLE_CHANGES and k not in ("data", "out") and a[k] != b[k]]
