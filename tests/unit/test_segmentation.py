"""The image-segmenter's pure steps (handlers/segmentation.py) and its settings, without a server."""

import base64
import json

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import decode_png

from handlers.model_settings import SettingsError
from handlers.segmentation import (
    SEGMENTER_OUTPUTS,
    answer,
    class_map,
    classes_bytes,
    mask_bytes,
    resize_exact,
    segmenter_logits,
)
from tskit.kinds import parse_settings

LABELS = ["sky", "sea", "sand"]


def test_the_logits_come_out_of_every_form_a_segmenter_returns():
    logits = torch.randn(2, 3, 8, 8)
    assert segmenter_logits(logits) is logits
    assert segmenter_logits({"out": logits, "aux": logits * 2}) is logits  # torchvision's form
    assert segmenter_logits((logits, logits * 2)) is logits
    with pytest.raises(ValueError, match=r"logits \[N, classes, H, W\]"):
        segmenter_logits(torch.randn(2, 3))


def test_the_map_is_the_arg_max_of_the_logits_upsampled_bilinearly_to_the_image():
    logits = torch.randn(3, 13, 17)
    expected = F.interpolate(logits[None], size=(300, 451), mode="bilinear", align_corners=False)[0].argmax(0)
    made = class_map(logits, 300, 451)
    assert made.dtype == torch.uint8 and made.shape == (300, 451)
    assert torch.equal(made.long(), expected)


def test_the_answer_is_an_8_bit_png_of_the_map_and_each_present_class_largest_first():
    indices = torch.zeros(4, 10, dtype=torch.uint8)
    indices[:, 7:] = 2  # sand: 12 of 40 pixels, sea absent
    made = answer(indices, LABELS)
    assert made["classes"] == [{"label": "sky", "index": 0, "fraction": 0.7},
                               {"label": "sand", "index": 2, "fraction": 0.3}]
    mask = made["mask"]
    assert (mask["format"], mask["width"], mask["height"]) == ("png", 10, 4)
    png = base64.b64decode(mask["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch.equal(decode_png(torch.frombuffer(bytearray(png), dtype=torch.uint8))[0], indices)
    assert len(str(made["classes"])) <= classes_bytes(len(LABELS), 4)


def test_the_v2_outputs_carry_the_answer():
    made = answer(torch.ones(2, 3, dtype=torch.uint8), LABELS)
    values = {o.name: o.values(made) for o in SEGMENTER_OUTPUTS}
    assert values == {"mask": made["mask"]["data"], "width": 3, "height": 2, "labels": ["sea"], "indices": [1],
                      "fractions": [1.0]}


def test_an_image_is_resized_to_the_input_square_without_a_crop():
    image = torch.zeros(3, 300, 451, dtype=torch.uint8)
    image[:, :, -10:] = 255  # a bright stripe at the right edge survives: nothing is cut off
    resized = resize_exact(image, 52)
    assert resized.shape == (3, 52, 52) and resized.dtype == torch.uint8
    assert int(resized[:, :, -1].min()) > 200


def test_what_a_mask_costs_before_the_arg_max():
    assert mask_bytes(3000, 6000, 4) == 288_000_000


def test_the_settings_are_checked():
    settings = parse_settings("image-segmenter", {"inputSize": 256})
    assert settings.input_size == 256 and settings.maxMaskBytes == 268_435_456
    for bad, message in [({"inputSize": 0}, "inputSize"), ({"std": [1, 0, 1]}, "std"),
                         ({"mean": [0.5]}, "mean"), ({"maxMaskBytes": 0}, "maxMaskBytes"),
                         ({"maxPixelsPerRequest": 10, "maxImagePixels": 20}, "maxPixelsPerRequest")]:
        with pytest.raises(SettingsError, match=message):
            parse_settings("image-segmenter", bad)


def test_make_optimize_agreement_counts_the_pixels_given_the_same_class():
    """The segmenter's agreement (tskit.kinds.answers.MASK): per probe the share of equal pixels; the worst probe."""
    from tskit.kinds import kind

    reference = torch.zeros(4, 10, dtype=torch.uint8)
    moved = reference.clone()
    moved[0, :4] = 1  # 4 of 40 pixels change class
    pairs = [(None, answer(reference, LABELS), answer(reference, LABELS)),
             (None, answer(reference, LABELS), answer(moved, LABELS))]
    measured = kind("image-segmenter").answer.agreement(pairs)
    assert measured == {"pixel_agreement": 0.9, "mean_pixel_agreement": 0.95}
    check = kind("image-segmenter").answer.check(answer(moved, LABELS), None)  # make bench's check under load
    assert check.verify(json.dumps(answer(reference, LABELS)).encode()) and not check.verify(
        json.dumps(answer(reference + 2, LABELS)).encode())
