"""uint8 image -> model input, matching torchvision's ImageNet reference transforms.

Reference (torchvision `ImageClassification` preset): Resize(256, bilinear, antialias) on the
PIL image, CenterCrop(224), scale to [0, 1], Normalize(mean, std). Here the resize and crop run
on uint8 tensors per image (sizes differ), and the float conversion and normalisation run once
on the stacked batch, on the model's device.
"""

from typing import List, NamedTuple, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

# Beyond this long/short side ratio, the parts of the image outside the final crop are cut off
# before resizing: a 1x40M-pixel strip would otherwise be resized to 256 x 10 G pixels.
MAX_ASPECT_BEFORE_PRECROP = 2.0


class ImageItem(NamedTuple):
    """One decoded request: its crop, ready to batch, and how many predictions it asked for."""

    crop: torch.Tensor  # uint8 [3, crop, crop]
    topk: int


def resize_and_crop(image: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """Shorter side to `resize_size` (antialiased bilinear), then the central `crop_size` square."""
    image = _precrop_extreme_aspect(image, resize_size, crop_size)
    image = F.resize(
        image, [resize_size], interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    return F.center_crop(image, [crop_size, crop_size])


def _precrop_extreme_aspect(image: torch.Tensor, resize_size: int, crop_size: int) -> torch.Tensor:
    """Cut the long side down to MAX_ASPECT x the short side, around the centre.

    The final crop spans at most the short side along both axes, so what is cut off is never
    seen; the resize then handles at most a 2:1 image. The short side is left as it is, so the
    resize scale (and so the pixels of the crop) stay as in the reference pipeline."""
    height, width = image.shape[-2:]
    short, long = min(height, width), max(height, width)
    keep = int(MAX_ASPECT_BEFORE_PRECROP * short)
    if long <= keep:
        return image
    if height > width:
        return F.center_crop(image, [keep, width])
    return F.center_crop(image, [height, keep])


def collate_normalize(
    crops: List[torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
) -> torch.Tensor:
    """Stack equal-size uint8 crops, move them (as uint8: 4x less to copy), scale and normalise."""
    batch = torch.stack(crops).to(device, non_blocking=True)
    batch = F.to_dtype(batch, torch.float32, scale=True)
    return F.normalize(batch, list(mean), list(std))
