"""image_decoding against hostile and unusual images found by the hostile-input suite (issue 5).

torchvision 0.29's PNG decoder crashes the process (SIGSEGV) on any libpng error met while reading
pixels; one such PNG killed a worker and failed every request batched with it. PNGs are decoded
with Pillow now. The crash cases run in a child process, so that a regression is reported as a
failed test rather than taking pytest down with it.

JPEGs whose scan data is zeroed or cut short (headers and end-of-image marker intact) used to decode
to a flat gray image and get a 200 with meaningless predictions: libjpeg only warns. They are a
CorruptImage now, on both JPEG paths (torchvision at full size; Pillow at reduced size, whose
suspects get a second decode that reads libjpeg's warning), and every valid form still decodes.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hostile_inputs import (
    cat,
    cmyk_jpeg,
    displayed,
    jpeg_cut_in_scan,
    jpeg_with_zeroed_scan,
    png16_gray,
    png16_rgb,
    png_with_bad_idat_crc,
    png_with_bad_row_filter,
    png_with_damaged_zlib,
    png_with_zeroed_idat,
    with_orientation,
)
from handlers.image_decoding import apply_orientation, decode_rgb
from handlers.request_errors import CorruptImage
from support import REPO, encode

LIMIT = 40_000_000

CHILD = """
import json, sys
sys.path[:0] = sys.argv[1:3]
from handlers.image_decoding import decode_rgb
from handlers.request_errors import RequestError
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
        "zeroed_idat": png_with_zeroed_idat(png),
    })
    for name, result in results.items():
        status, kind, message = result
        assert (status, kind) == (400, "CorruptImage"), (name, result)
        if name == "bad_idat_crc":  # Pillow does not check IDAT CRCs; image_decoding does, as libpng
            assert re.fullmatch(r"the PNG image data is damaged \(IDAT chunk at byte \d+ fails its CRC\)", message)
        elif name == "zeroed_idat":
            assert message == "the image cannot be decoded (broken data stream when reading image file)"
        else:
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


# ---- JPEG scan data zeroed or cut short --------------------------------------------------------
PHOTO_SIZE = (640, 480)
REDUCED = 224  # 480 >= 2 * 224: decoded by Pillow at 1/2 scale, the classifier's path for large JPEGs
PATHS = {"full": (None, (3, 480, 640)), "reduced": (REDUCED, (3, 240, 320))}
PREMATURE_END = r"the JPEG image data is damaged \(libjpeg: Corrupt JPEG data: premature end of data segment\)"
UNUSED = (r"the JPEG image data is damaged: most of it was not used \(libjpeg: Corrupt JPEG data: "
          r"\d+ extraneous bytes before marker 0xd9 in a file of \d+ bytes\)")


@pytest.fixture(scope="module")
def jpegs():
    photo = cat().resize(PHOTO_SIZE)
    return {
        "baseline": encode(photo, "JPEG", quality=90),
        "optimized": encode(photo, "JPEG", quality=90, optimize=True),
        "progressive": encode(photo, "JPEG", quality=90, progressive=True),
        "restart markers": encode(photo, "JPEG", quality=90, restart_marker_blocks=4),
        "4:4:4": encode(photo, "JPEG", quality=90, subsampling=0),
        "grayscale": encode(photo.convert("L"), "JPEG", quality=90),
        "CMYK": cmyk_jpeg(photo),
    }


def refused(blob: bytes, side) -> str:
    with pytest.raises(CorruptImage) as err:
        decode_rgb(blob, LIMIT, side)
    assert err.value.status == 400
    return err.value.message


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("form, expected", [
    ("baseline", PREMATURE_END), ("optimized", PREMATURE_END), ("4:4:4", PREMATURE_END),
    ("grayscale", PREMATURE_END), ("CMYK", PREMATURE_END),
    # zeroing also wipes the later scans' headers / the RST markers: libjpeg decodes the first scan or
    # interval from zeros, then skips ~90% of the file as extraneous bytes
    ("progressive", UNUSED), ("restart markers", UNUSED),
])
def test_jpeg_with_zeroed_scan_data_is_corrupt(jpegs, form, expected, path):
    blob = jpeg_with_zeroed_scan(jpegs[form])
    assert len(blob) == len(jpegs[form]) and blob.endswith(b"\xff\xd9")
    assert re.fullmatch(expected, refused(blob, PATHS[path][0]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("form", ["baseline", "optimized", "restart markers", "grayscale", "CMYK"])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_jpeg_cut_in_its_scan_with_the_end_marker_put_back_is_corrupt(jpegs, form, fraction, path):
    assert re.fullmatch(PREMATURE_END, refused(jpeg_cut_in_scan(jpegs[form], fraction), PATHS[path][0]))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_progressive_jpeg_cut_in_its_scan_is_corrupt_at_full_size(jpegs, fraction):
    assert re.fullmatch(PREMATURE_END, refused(jpeg_cut_in_scan(jpegs["progressive"], fraction), None))


@pytest.mark.xfail(strict=True, reason="known gap: on the reduced path Pillow discards libjpeg's warning, and a "
                   "progressive scan cut short leaves no flat last row to send it to the warning-reading decode")
def test_progressive_jpeg_cut_in_its_scan_on_the_reduced_path(jpegs):
    refused(jpeg_cut_in_scan(jpegs["progressive"], 0.5), REDUCED)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("form", ["baseline", "progressive", "restart markers"])
def test_jpeg_cut_in_its_scan_without_an_end_marker_is_truncated(jpegs, form, path):
    blob = jpeg_cut_in_scan(jpegs[form], 0.5, end_marker=False)
    assert refused(blob, PATHS[path][0]) == "the JPEG data is truncated (no end-of-image marker)"


def padded(jpeg: bytes) -> bytes:
    """16 zero bytes before EOI (libjpeg-turbo's Huffman decoder reads a few ahead: it reports 10)."""
    return jpeg[:-2] + bytes(16) + b"\xff\xd9"


def valid_jpegs(jpegs):
    photo = cat().resize(PHOTO_SIZE)
    return {
        **jpegs,
        "EXIF-rotated": with_orientation(photo, 6, quality=90),  # stored 480x640, shown 640x480
        # a flat image with optimised Huffman tables: its scan is all zero bits, and it is valid
        "flat black, optimized": encode(Image.new("RGB", PHOTO_SIZE), "JPEG", optimize=True),
        "flat red": encode(Image.new("RGB", PHOTO_SIZE, (200, 10, 10)), "JPEG"),
        "500 bytes after the end marker": jpegs["baseline"] + b"x" * 500,
        # bytes between the scan and EOI: libjpeg warns of extraneous bytes, but the whole image was
        # decoded (encoder padding, as some cameras write)
        "padding before the end marker": padded(jpegs["baseline"]),
    }


@pytest.mark.parametrize("path", PATHS)
def test_valid_jpeg_forms_still_decode(jpegs, path):
    side, shape = PATHS[path]
    for name, blob in valid_jpegs(jpegs).items():
        image = decode_rgb(blob, LIMIT, side)
        assert tuple(image.shape) == shape and image.dtype == torch.uint8, name  # EXIF-rotated: shown upright
        shown = Image.fromarray(displayed(blob))
        if side:
            shown = shown.reduce(2)
        reference = torch.from_numpy(np.asarray(shown).copy()).permute(2, 0, 1)
        assert (image.float() - reference.float()).abs().mean() < 4, name


def test_libjpeg_warning_still_reaches_the_worker_log(jpegs, capfd):
    """The libjpeg line is read from fd 2 and written back: the worker log shows it as before."""
    decode_rgb(padded(jpegs["baseline"]), LIMIT)
    assert capfd.readouterr().err == "Corrupt JPEG data: 10 extraneous bytes before marker 0xd9\n"
    with pytest.raises(CorruptImage):
        decode_rgb(jpeg_with_zeroed_scan(jpegs["baseline"]), LIMIT)
    assert capfd.readouterr().err == "Corrupt JPEG data: premature end of data segment\n"
    decode_rgb(jpegs["baseline"], LIMIT)
    assert capfd.readouterr().err == ""


def test_valid_pngs_pass_the_crc_check(photo_cat):
    rotated = photo_cat.transpose(Image.Transpose.ROTATE_180)
    apng = encode(photo_cat, "PNG", save_all=True, append_images=[rotated])  # fdAT chunks
    assert b"fdAT" in apng
    assert decode_rgb(apng, LIMIT).shape == (3, 300, 451)
    big = encode(photo_cat.resize((1200, 800)), "PNG")  # several IDAT chunks
    assert big.count(b"IDAT") > 2 and decode_rgb(big, LIMIT).shape == (3, 800, 1200)
