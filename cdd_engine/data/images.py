"""Decode images and masks, and serve them to PyTorch as normalised tensors.

:func:`decode_image` is the one image decoder of the package: training, evaluation, reports,
``cdd-engine score`` and INT8 calibration all read files through it, so a file gets the same
pixels (and the same score) on every path. Its rules:

- 8-bit grey (``L``, ``1``, ``LA``) -> grey; 16-bit grey (``I;16*``, and ``I`` with values in
  0..65535, as some Pillow versions open 16-bit PNG/TIFF) is *scaled* to 0..255, rounded,
  never clipped; palette files are grey when every palette colour is grey, else RGB; RGB,
  RGBA (alpha dropped), CMYK, YCbCr -> RGB. Floating-point files (``F``) are refused: their
  range is not stated in the file.
- EXIF orientation is applied (images and masks alike), so a pixel is where a viewer, and an
  annotation tool drawing a mask, shows it. Camera frames given to an Engine carry no EXIF.
- Files over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89.5
  megapixels) are refused with :class:`ImageTooLargeError` before their pixels are decoded.

Training images are uint8 (H, W, 3) arrays; grayscale files are replicated to three channels
so every backbone sees RGB. A data set is either all RGB or all
grayscale (`detect_color` reads the first training image): a mixed set is an error, not a
silent conversion, because a teacher sees a colour image and its gray copy differently.
Resizing and normalisation go through `cdd_engine.preprocess.resize_normalize`, the one
definition shared by training and the engines.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from ..preprocess import resize_normalize  # the one pre-processing definition (train = engine)
from .samples import ANOMALOUS, DatasetError, DatasetSplit, MissingPathError, Sample

Color = Literal["rgb", "gray"]
MIN_SIDE = 8  # smaller images cannot pass the backbone's stride-8+ stages meaningfully

_GRAY_MODES = ("1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N")
_RGB_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_MODE_WORD = {"gray": "grayscale", "rgb": "RGB"}


class UnreadableImageError(DatasetError):
    """An image file cannot be decoded (corrupt, truncated, unsupported); ``path`` names it."""

    def __init__(self, message: str, path: str | os.PathLike) -> None:
        super().__init__(message)
        self.path = str(path)


class ImageTooLargeError(UnreadableImageError):
    """An image file has more pixels than Pillow's decompression-bomb limit."""


def _too_large(path, exc) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image {path} is too large to decode: {exc} (the limit is PIL.Image.MAX_IMAGE_PIXELS = "
        f"{Image.MAX_IMAGE_PIXELS} pixels, a guard against decompression bombs; downscale or tile the image)",
        path)


def _open(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode a file, EXIF orientation applied (see the module docstring)."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit (and then decodes gigabytes): refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
    except FileNotFoundError:
        raise MissingPathError(f"image file does not exist: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, exc) from None
    except (OSError, ValueError, SyntaxError, SystemError) as exc:
        raise UnreadableImageError(f"cannot read image {path}: unreadable or corrupt file ({exc})", path) from None
    return im


def _decode(im: Image.Image, path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """-> ("gray", (H,W) uint8) or ("rgb", (H,W,3) uint8) according to how the file stores pixels."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr16 = np.asarray(im).astype(np.int64)
        if mode == "I" and arr16.size and (arr16.min() < 0 or arr16.max() > 65535):
            raise UnreadableImageError(f"32-bit integer image with values outside 0..65535 (range "
                                       f"{arr16.min()}..{arr16.max()} is not stated in the file): {path}", path)
        return "gray", ((arr16 * 255 + 32767) // 65535).astype(np.uint8)  # 16 -> 8 bit, rounded
    if mode in _GRAY_MODES:
        return "gray", np.array(im.convert("L"))  # np.array: a writable copy (torch wants one)
    if mode in ("P", "PA"):
        rgb = np.array(im.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return "gray", np.ascontiguousarray(rgb[..., 0])
        return "rgb", rgb
    if mode in _RGB_MODES:
        return "rgb", np.array(im.convert("RGB"))
    raise UnreadableImageError(f"unsupported pixel mode {mode!r} (expected 8-bit grey/RGB/palette or 16-bit "
                               f"grey; floating-point files have no stated range): {path}", path)


def decode_image(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """Decode one image file the way every path of the package does.

    Returns ("gray", uint8 (H, W)) or ("rgb", uint8 (H, W, 3)). Raises MissingPathError,
    UnreadableImageError (ImageTooLargeError over the pixel limit); all are DatasetErrors.
    """
    with _open(path) as im:
        return _decode(im, path)


def find_unreadable(paths: Sequence[str | os.PathLike]) -> list[dict[str, str]]:
    """Decode every file; -> [{"path", "error"}] of those that cannot be read (in order).

    For ``--skip-bad-images``: the caller drops these files, lists them and goes on.
    """
    bad = []
    for p in paths:
        try:
            decode_image(p)
        except DatasetError as e:
            bad.append({"path": str(p), "error": str(e)})
    return bad


def load_image(path: str | os.PathLike, color: Color = "rgb") -> np.ndarray:
    """Decode one image file -> uint8 (H, W, 3).

    color="rgb" expects a colour file; color="gray" a grayscale one, replicated to three
    channels (an RGB file whose three channels are identical is accepted as gray). A file of
    the other kind, an unreadable file and an image smaller than 8x8 raise DatasetError.
    """
    if color not in ("rgb", "gray"):
        raise ValueError(f"color must be 'rgb' or 'gray', got {color!r}")
    with _open(path) as im:
        w, h = im.size
        if w < MIN_SIDE or h < MIN_SIDE:
            raise DatasetError(f"image is {w}x{h}, smaller than {MIN_SIDE}x{MIN_SIDE}: {path}")
        kind, arr = _decode(im, path)
        mode = im.mode
    if kind == "rgb" and color == "gray":
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            kind, arr = "gray", np.ascontiguousarray(arr[..., 0])
    if kind != color:
        raise DatasetError(f"expected {_MODE_WORD[color]}, got {_MODE_WORD[kind]} (mode {mode}): {path}")
    if kind == "gray":
        return np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def detect_color(samples: Sequence[Sample] | DatasetSplit) -> Color:
    """"gray" or "rgb" from the first training image (pass split.train or the split itself)."""
    if isinstance(samples, DatasetSplit):
        samples = samples.train
    if len(samples) == 0:
        raise ValueError("detect_color needs at least one sample, got an empty list")
    first = samples[0]
    path = first.path if isinstance(first, Sample) else first
    with _open(path) as im:
        kind, _ = _decode(im, path)
    return "gray" if kind == "gray" else "rgb"


def _read_mask(path: str | os.PathLike) -> np.ndarray:
    """Mask file -> bool (H, W) at its own size; any non-zero pixel is defect."""
    with _open(path) as im:
        if im.mode.startswith("I;16") or im.mode in ("I", "F"):
            arr = np.asarray(im)
        else:
            arr = np.asarray(im.convert("L"))
    return arr > 0


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool (h, w) -> float32 (H, W) in {0,1}: antialiased bilinear resize, then >= 0.5.

    Thresholding the area-weighted average keeps a region's area when masks are shrunk
    (nearest-neighbour would drop or fatten thin defects depending on the sampling phase).
    """
    h, w = size
    if mask.shape == (h, w):
        return mask.astype(np.float32)
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    resized = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR))
    return (resized >= 128).astype(np.float32)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and s >= MIN_SIDE for s in size)):
        raise ValueError(f"size must be (H, W) with ints >= {MIN_SIDE}, got {size!r}")
    return int(size[0]), int(size[1])


def load_mask(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """Ground-truth mask file -> float32 (H, W) in {0, 1} at `size` = (H, W)."""
    return _resize_mask(_read_mask(path), _check_size(size))


def _resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h,w,3) -> uint8 (H,W,3) by the shared resize (mean 0, std 1/255 = identity
    normalisation), rounded. Exactly the input when it already has the target size."""
    if image.shape[:2] == size:
        return image
    x = resize_normalize(torch.from_numpy(image)[None], size, (0.0, 0.0, 0.0), (1 / 255,) * 3)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _check_stats(name: str, v) -> tuple[float, float, float]:
    t = tuple(float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1))
    if len(t) != 3 or not all(np.isfinite(t)):
        raise ValueError(f"{name} must be 3 finite numbers (one per RGB channel), got {v!r}")
    return t  # type: ignore[return-value]


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> dict(image=(3,H,W) float32 normalised, label=int, path=str[, mask=(1,H,W)]).

    image_size is (H, W) (an int means square). mean/std are per-channel on the 0..1 scale.
    with_masks=True adds ``mask`` (float32 {0,1}; zeros for good and unlabelled images; an
    anomalous sample without a mask file is an error). cache=True keeps each decoded image
    after resizing to image_size as uint8 (3*H*W bytes per image) because training re-reads
    every image each epoch and PNG decoding on 2 cores dominates; the cached image is the
    shared resize rounded to uint8, so it equals the uncached path exactly when the file
    already has the target size and differs by at most half a grey level otherwise
    (use cache=False where bit-exact agreement with an engine matters). With DataLoader
    workers every worker holds its own cache.
    """

    def __init__(self, samples: Sequence[Sample], image_size: tuple[int, int] | int, mean, std,
                 color: Color = "rgb", with_masks: bool = False, cache: bool = True) -> None:
        if isinstance(samples, DatasetSplit):
            raise TypeError("ImageDataset takes a list of Samples (split.train or split.test), "
                            "got a DatasetSplit")
        samples = list(samples)
        if not samples:
            raise ValueError("ImageDataset needs at least one sample, got none")
        bad = [s for s in samples if not isinstance(s, Sample)]
        if bad:
            raise TypeError(f"ImageDataset expects Sample objects, got {type(bad[0]).__name__}")
        if color not in ("rgb", "gray"):
            raise ValueError(f"color must be 'rgb' or 'gray', got {color!r}")
        self.samples = samples
        self.image_size = _check_size(image_size)
        self.mean = _check_stats("mean", mean)
        self.std = _check_stats("std", std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {std!r}")
        self.color = color
        self.with_masks = bool(with_masks)
        if self.with_masks:
            unmasked = [s.path for s in samples if s.label == ANOMALOUS and s.mask_path is None]
            if unmasked:
                raise ValueError(f"with_masks=True but {len(unmasked)} anomalous sample(s) have no "
                                 f"mask file, e.g. {unmasked[0]}")
        self.cache = bool(cache)
        self._images: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.samples[i]
        image = load_image(s.path, self.color)
        mask = None
        if self.with_masks:
            if s.mask_path is None:
                mask = np.zeros(self.image_size, np.float32)
            else:
                raw = _read_mask(s.mask_path)
                if raw.shape != image.shape[:2]:
                    raise DatasetError(f"mask {s.mask_path} is {raw.shape[1]}x{raw.shape[0]} but its image "
                                       f"{s.path} is {image.shape[1]}x{image.shape[0]}")
                mask = _resize_mask(raw, self.image_size)
        return image, mask

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = i % len(self)
        if self.cache and i in self._images:
            image, mask = self._images[i], self._masks.get(i)
        else:
            image, mask = self._load(i)
            if self.cache:
                image = _resize_uint8(image, self.image_size)
                self._images[i] = image
                if mask is not None:
                    self._masks[i] = mask
        x = resize_normalize(torch.from_numpy(image)[None], self.image_size, self.mean, self.std)[0]
        item = {"image": x.contiguous(), "label": self.samples[i].label, "path": self.samples[i].path}
        if self.with_masks:
            item["mask"] = torch.from_numpy(mask)[None]
        return item
