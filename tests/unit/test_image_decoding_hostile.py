"""image_decoding against hostile and unusual images found by the hostile-input suite (issue 5).

torchvision 0.29's PNG decoder crashes the process (SIGSEGV) on any libpng error met while reading
pixels; one such PNG killed a worker and failed every request batched with it. PNGs are decoded
with Pillow now. The crash cases run in a child process, so that a regression is reported as a
failed test rather than taking pytest down with it.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hostile_inputs import (
    cat,
    displayed,
    png16_gray,
    png16_rgb,
    png_with_bad_idat_crc,
    png_with_bad_row_filter,
    png_with_damaged_zlib,
    with_orientation,
)
from image_decoding import apply_orientation, decode_rgb
from support import REPO, encode

LIMIT = 40_000_000

CHILD = """
import json, sys
sys.path[:0] = sys.argv[1:3]
from image_decoding import decode_rgb
from request_errors import RequestError
out = {}
for path in sys.argv[3:]:
    try:
        out[path] = list(decode_rgb(open(path, "rb").read(), 40_000_000).shape)
    except RequestError as err:
        out[path] = [err.status, err.type, err.message]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def photo_cat():
    return cat()


def decode_in_child(tmp_path, blobs):
    """decode_rgb of each blob in a child process: {name: [C, H, W] or [status, type, message]}."""
    paths = {}
    for name, blob in blobs.items():
        paths[name] = str(tmp_path / f"{name}.bin")
        with open(paths[name], "wb") as f:
            f.write(blob)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, os.path.join(REPO, "handlers"), os.path.join(REPO, "tests"),
         *paths.values()], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"decoding crashed the process (exit {child.returncode}): {child.stderr[-2000:]}"
    results = json.loads(child.stdout.strip().splitlines()[-1])
    return {name: results[path] for name, path in paths.items()}


def test_corrupt_png_pixel_data_is_a_400_not_a_crash(photo_cat, tmp_path):
    png = encode(photo_cat.resize((120, 80)), "PNG")
    results = decode_in_child(tmp_path, {
        "bad_filter_first_row": png_with_bad_row_filter(png, 0),
        "bad_filter_last_row": png_with_bad_row_filter(png, 79),
        "damaged_zlib": png_with_damaged_zlib(png),
        "bad_idat_crc": png_with_bad_idat_crc(png),
    })
    for name, result in results.items():
        if name == "bad_idat_crc" and result == [3, 80, 120]:
            continue  # Pillow does not check IDAT CRCs; decoding it is fine, crashing is not
        status, kind, message = result
        assert (status, kind) == (400, "CorruptImage"), (name, result)
        assert "cannot be decoded" in message


@pytest.mark.parametrize("fmt, kwargs, tolerance", [
    ("PNG", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("JPEG", {"quality": 95}, 4),
])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured_like_an_image_viewer(photo_cat, fmt, kwargs, tolerance, orientation):
    upright = photo_cat.resize((90, 60))  # not square: a wrong rotation changes the shape
    blob = with_orientation(upright, orientation, fmt, **kwargs)
    image = decode_rgb(blob, LIMIT)
    expected = torch.from_numpy(displayed(blob).copy()).permute(2, 0, 1)
    assert tuple(image.shape) == (3, 60, 90)
    assert (image.int() - expected.int()).abs().float().mean() <= tolerance


def test_apply_orientation_matches_pillow_for_all_eight_tags():
    stored = Image.fromarray(np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3))
    from PIL import ImageOps
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        tagged = stored.copy()
        tagged.info["exif"] = exif.tobytes()
        expected = torch.from_numpy(np.asarray(ImageOps.exif_transpose(tagged)).copy()).permute(2, 0, 1)
        got = apply_orientation(torch.from_numpy(np.asarray(stored).copy()).permute(2, 0, 1), orientation)
        assert torch.equal(got, expected), orientation


def test_damaged_exif_is_ignored(photo_cat):
    blob = bytearray(with_orientation(photo_cat, 6, "WEBP", lossless=True))
    at = blob.find(b"EXIF")
    assert at > 0
    blob[at + 8:at + 24] = b"\xff" * 16  # the TIFF header inside the EXIF chunk
    assert decode_rgb(bytes(blob), LIMIT).shape[0] == 3


def test_sixteen_bit_png_forms(photo_cat):
    gray = decode_rgb(png16_gray(photo_cat), LIMIT)
    assert gray.shape == (3, 300, 451) and gray.dtype == torch.uint8
    reference = torch.from_numpy(np.asarray(photo_cat.convert("L")).copy())
    assert torch.equal(gray[0], reference) and torch.equal(gray[0], gray[2])  # x*257 scales back exactly

    rgb16 = np.asarray(photo_cat, dtype=np.uint16) * 257 + 100  # not exact multiples of 257
    rgb = decode_rgb(png16_rgb(rgb16), LIMIT)
    assert rgb.shape == (3, 300, 451) and rgb.dtype == torch.uint8
    expected = torch.from_numpy(np.asarray(photo_cat).copy()).permute(2, 0, 1)
    assert (rgb.int() - expected.int()).abs().max() <= 1  # scaled to 8 bits, channels in order
