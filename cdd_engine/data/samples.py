"""Plain records that describe a data set: one `Sample` per image, one `DatasetSplit` per category.

Labels follow the fully unsupervised (FUAD) convention: what a learner may know about an
image is its ``label``; ``defect_type`` is provenance kept for reports and must never be
used for training.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GOOD = 0
ANOMALOUS = 1
UNKNOWN = -1


class DatasetError(ValueError):
    """A data set on disk is not what the caller said it is (layout, category, files)."""


class MissingPathError(DatasetError, FileNotFoundError):
    """A file or folder a data set needs does not exist (both a ValueError and a FileNotFoundError)."""


@dataclass(frozen=True)
class Sample:
    """One image of a data set.

    path: absolute path of the image file.
    label: 0 good, 1 anomalous, -1 unknown (every training image and every image of an
        unlabelled folder: in FUAD the learner never knows which training images are good).
    mask_path: ground-truth mask of an anomalous test image, else None.
    defect_type: "good", the defect folder name, or "unknown" (provenance: a training image
        from MVTec's train/good keeps "good", an injected noisy image keeps its defect name).
    """

    path: str
    label: int
    mask_path: str | None
    defect_type: str

    def __post_init__(self) -> None:
        if self.label not in (GOOD, ANOMALOUS, UNKNOWN):
            raise ValueError(f"Sample.label must be 0, 1 or -1, got {self.label!r} for {self.path}")


@dataclass
class DatasetSplit:
    """The train and test samples of one category.

    name: e.g. "mvtec:brick"; root: absolute dataset root that relative paths (noise
    manifests) refer to. skipped: [{"path", "error"}] of the image files that could not be
    decoded and were left out (``readers.drop_unreadable``, ``--skip-bad-images``).
    """

    name: str
    root: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # unreadable files left out (--skip-bad-images)

    def summary(self) -> str:
        """One line with the counts, for logs and error messages."""
        n_anom = sum(s.label == ANOMALOUS for s in self.test)
        n_good = sum(s.label == GOOD for s in self.test)
        return (f"{self.name}: {len(self.train)} train, {len(self.test)} test "
                f"({n_good} good, {n_anom} anomalous)")
