"""Real photos, bundled with installed packages, for accuracy checks and int8 calibration.

Nothing is downloaded: the photos come from scikit-image's `skimage.data`, matplotlib's sample
data and scikit-learn's sample images. Two disjoint sets of views are made from them:
- agreement_images(): what a precision or runtime change is judged on (top-1 agreement with
  fp32). Views: the whole photo, centre and corner crops, horizontal flips, rescales.
- calibration_batches(): what int8 calibration sees. Views the agreement set never contains
  (crops rotated by 90 degrees, mid-edge crops at another size, a 0.7 rescale), so the
  calibration ranges are not fitted to the very images they are then judged on.
Both go through the package's own decode and preprocessing (handlers/ on PYTHONPATH), so a
model is measured on the tensors it will be served.
"""

import io
from typing import Callable, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from handlers.image_decoding import decode_rgb
from handlers.image_transforms import collate_normalize, resize_and_crop

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
JPEG_QUALITY = 90
MAX_PIXELS = 40_000_000
# skimage.data photos that ship inside the wheel (others, e.g. skin or lily, need a download).
SKIMAGE_COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina")
SKIMAGE_GRAY = ("camera", "coins", "moon", "page", "clock", "grass", "gravel", "brick", "text")

View = Callable[[np.ndarray], np.ndarray]


def real_photos() -> List[Tuple[str, np.ndarray]]:
    """Every bundled real photo as (name, HxWx3 uint8 RGB), in a fixed order."""
    photos = _skimage_photos() + [("grace_hopper", _matplotlib_grace_hopper())]
    photos += _sklearn_photos()
    return photos


def _skimage_photos() -> List[Tuple[str, np.ndarray]]:
    from skimage import data

    left, right, _ = data.stereo_motorcycle()  # the motorcycle photos come as a stereo pair
    colour = _skimage_named(SKIMAGE_COLOUR) + [("motorcycle_left", left), ("motorcycle_right", right)]
    return colour + _skimage_named(SKIMAGE_GRAY)


def _skimage_named(names: Sequence[str]) -> List[Tuple[str, np.ndarray]]:
    from skimage import data

    photos = []
    for name in names:
        try:
            image = getattr(data, name)()
        except Exception:  # a photo this skimage version lacks or would have to download
            continue
        photos.append((name, _to_rgb8(image)))
    return photos


def _matplotlib_grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def _sklearn_photos() -> List[Tuple[str, np.ndarray]]:
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    names = [f.rsplit("/", 1)[-1].rsplit(".", 1)[0] for f in bunch.filenames]
    return [(name, _to_rgb8(image)) for name, image in zip(names, bunch.images)]


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    """Gray, RGBA, bool or float images as HxWx3 uint8 (the model takes RGB only)."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image * (255 if image.max() <= 1 else 1), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


# ---- views -----------------------------------------------------------------------------------
# Where a crop sits, as (vertical, horizontal) fractions of the room left around it.
ANCHORS = {"c": (0.5, 0.5), "tl": (0, 0), "tr": (0, 1), "bl": (1, 0), "br": (1, 1),
           "l": (0.5, 0), "r": (0.5, 1), "t": (0, 0.5), "b": (1, 0.5)}


def _crop(frac: float, where: str) -> View:
    """A crop `frac` of each side, at the centre, a corner or a mid-edge (see ANCHORS)."""
    def view(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        ch, cw = max(1, int(h * frac)), max(1, int(w * frac))
        fy, fx = ANCHORS[where]
        top, left = int((h - ch) * fy), int((w - cw) * fx)
        return image[top:top + ch, left:left + cw]
    return view


def _flip(image: np.ndarray) -> np.ndarray:
    return image[:, ::-1]


def _rescale(scale: float) -> View:
    def view(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return view


def _rot90(image: np.ndarray) -> np.ndarray:
    return np.rot90(image)


# Agreement views, in rounds: each round covers every photo before the next begins, so a
# smaller min_count still spreads over all photos.
AGREEMENT_VIEWS: Sequence[Tuple[str, Sequence[View]]] = [
    ("full", []), ("flip", [_flip]), ("crop-c", [_crop(0.75, "c")]),
    ("crop-tl", [_crop(0.75, "tl")]), ("crop-br", [_crop(0.75, "br")]),
    ("crop-tr", [_crop(0.75, "tr")]), ("crop-bl", [_crop(0.75, "bl")]),
    ("crop-c/flip", [_flip, _crop(0.75, "c")]), ("crop-tl/flip", [_flip, _crop(0.75, "tl")]),
    ("crop-br/flip", [_flip, _crop(0.75, "br")]), ("scale-0.5", [_rescale(0.5)]),
    ("scale-0.5/flip", [_flip, _rescale(0.5)]), ("crop-c60", [_crop(0.6, "c")]),
    ("crop-c60/flip", [_flip, _crop(0.6, "c")]),
]
# Calibration views: none of them is an agreement view (rotations and other crop geometry).
CALIBRATION_VIEWS: Sequence[Tuple[str, Sequence[View]]] = [
    ("rot90", [_rot90]), ("crop-l65", [_crop(0.65, "l")]), ("crop-r65", [_crop(0.65, "r")]),
    ("crop-t65/rot90", [_crop(0.65, "t"), _rot90]), ("crop-b65/flip", [_crop(0.65, "b"), _flip]),
    ("scale-0.7/rot90", [_rescale(0.7), _rot90]), ("crop-c85", [_crop(0.85, "c")]),
    ("crop-c50/rot90", [_crop(0.5, "c"), _rot90]),
]


def _views(views, min_count: int) -> List[Tuple[str, bytes]]:
    """JPEG bytes of photo x view, round by round, until min_count (all rounds if needed)."""
    photos = real_photos()
    out: List[Tuple[str, bytes]] = []
    for view_name, steps in views:
        for photo_name, image in photos:
            for step in steps:
                image = step(image)
            out.append((f"{photo_name}/{view_name}", to_jpeg(image)))
        if len(out) >= min_count:
            return out
    if len(out) < min_count:
        raise ValueError(f"only {len(out)} views of {len(photos)} photos; asked for {min_count}")
    return out


def to_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Deterministic JPEG bytes (same Pillow/libjpeg, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def agreement_images(min_count: int = 100) -> List[Tuple[str, bytes]]:
    """At least min_count named JPEGs (e.g. "chelsea/crop-tl/flip") to judge top-1 agreement on."""
    return _views(AGREEMENT_VIEWS, min_count)


def calibration_images(min_count: int = 64) -> List[Tuple[str, bytes]]:
    """At least min_count named JPEGs, disjoint from agreement_images(), for int8 calibration."""
    return _views(CALIBRATION_VIEWS, min_count)


def model_inputs(jpegs: Sequence[bytes], resize: int = 256, crop: int = 224,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> torch.Tensor:
    """float32 [N, 3, crop, crop] exactly as the served handler makes it from the same bytes."""
    crops = [resize_and_crop(decode_rgb(data, MAX_PIXELS, resize), resize, crop) for data in jpegs]
    return collate_normalize(crops, list(mean), list(std), torch.device("cpu"))


def calibration_batches(min_count: int = 64, batch_size: int = 8, settings=None) -> Iterator[np.ndarray]:
    """float32 NCHW batches of calibration_images(), ready for quantize_static."""
    jpegs = [data for _, data in calibration_images(min_count)]
    # the model's own preprocessing (an image-classifier's typed settings), ImageNet's by default
    pre = {} if settings is None else dict(resize=settings.resizeSize, crop=settings.cropSize,
                                           mean=settings.mean, std=settings.std)
    for start in range(0, len(jpegs), batch_size):
        yield model_inputs(jpegs[start:start + batch_size], **pre).numpy()
