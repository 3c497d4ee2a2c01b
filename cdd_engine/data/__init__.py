"""Data sets for anomaly detection: readers (MVTec, VisA, plain folders), image decoding and
the PyTorch dataset, the noisy-training (FUAD) protocol, and offline demo data.

The demo generator imports scikit-image only when called.
"""
from .images import ImageDataset, detect_color, load_image, load_mask
from .noise import NoiseManifest, inject_noise
from .readers import IMAGE_EXTENSIONS, LAYOUTS, guess_layout, list_categories, read_dataset
from .samples import ANOMALOUS, GOOD, UNKNOWN, DatasetError, DatasetSplit, MissingPathError, Sample


def make_demo_dataset(*args, **kwargs):
    """See `cdd_engine.data.demo.make_demo_dataset` (imported lazily: it needs scikit-image)."""
    from .demo import make_demo_dataset as _make

    return _make(*args, **kwargs)


__all__ = [
    "Sample", "DatasetSplit", "DatasetError", "MissingPathError", "GOOD", "ANOMALOUS", "UNKNOWN",
    "read_dataset", "list_categories", "guess_layout", "LAYOUTS", "IMAGE_EXTENSIONS",
    "load_image", "load_mask", "detect_color", "ImageDataset",
    "NoiseManifest", "inject_noise", "make_demo_dataset",
]
