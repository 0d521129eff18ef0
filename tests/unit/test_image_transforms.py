"""Preprocessing parity with torchvision's reference ImageNet pipeline (PIL), on real photos."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

from image_decoding import decode_rgb
from image_transforms import collate_normalize, resize_and_crop
from support import encode, photo

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ONE_LEVEL = 1 / 255 / min(STD)  # one uint8 step, in normalised units: 0.0175
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket", "camera"]


def ours(png: bytes) -> torch.Tensor:
    crop = resize_and_crop(decode_rgb(png, 40_000_000), 256, 224)
    return collate_normalize([crop], MEAN, STD, torch.device("cpu"))[0]


@pytest.mark.parametrize("name", PHOTOS)
def test_matches_torchvision_reference_within_one_uint8_level(name):
    image = Image.fromarray(photo(name)).convert("RGB")
    reference = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(image)
    diff = (ours(encode(image, "PNG")) - reference).abs()
    # Measured: max 0.0175 (one uint8 level: PIL and torch round the antialiased resize
    # differently on a few pixels), mean under 1e-4.
    assert diff.max() <= ONE_LEVEL + 1e-6, name
    assert diff.mean() < 1e-4, name


def test_batch_normalisation_equals_one_by_one():
    crops = [resize_and_crop(decode_rgb(encode(photo(n), "PNG"), 40_000_000), 256, 224)
             for n in ("chelsea", "coffee")]
    batch = collate_normalize(crops, MEAN, STD, torch.device("cpu"))
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.float32
    for i, crop in enumerate(crops):
        assert torch.equal(batch[i], collate_normalize([crop], MEAN, STD, torch.device("cpu"))[0])


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (224, 224), (3000, 40), (40, 3000), (1, 20000)])
def test_any_size_gives_the_crop(size):
    image = torch.randint(0, 256, (3, size[1], size[0]), dtype=torch.uint8)
    assert resize_and_crop(image, 256, 224).shape == (3, 224, 224)


def test_extreme_aspect_precrop_keeps_the_center_the_same():
    # A 3:1 panorama: cutting the sides first must not change what the centre crop sees.
    image = Image.fromarray(photo("astronaut")).convert("RGB").resize((1536, 512))
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()
    reference = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(image)
    ours_ = collate_normalize([resize_and_crop(tensor, 256, 224)], MEAN, STD, torch.device("cpu"))[0]
    assert (ours_ - reference).abs().mean() < 0.01
