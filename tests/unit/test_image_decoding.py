"""image_decoding: every supported form becomes RGB uint8; every bad form is a clear RequestError."""

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.image_decoding import decode_rgb, read_header
from handlers.request_errors import CorruptImage, ImageTooLarge, UnsupportedMediaType
from support import encode, photo

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def cat():
    return Image.fromarray(photo("chelsea"))  # 451x300 RGB


@pytest.mark.parametrize(
    "fmt, mode",
    [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGB"), ("PNG", "RGBA"),
     ("PNG", "P"), ("PNG", "LA"), ("PNG", "L"), ("WEBP", "RGB"), ("WEBP", "RGBA"),
     ("BMP", "RGB"), ("BMP", "P"), ("GIF", "P")],
)
def test_supported_forms_decode_to_rgb_uint8(cat, fmt, mode):
    image = decode_rgb(encode(cat.convert(mode), fmt), LIMIT)
    assert image.dtype == torch.uint8
    assert tuple(image.shape) == (3, 300, 451)
    reference = torch.from_numpy(np.array(cat.convert(mode).convert("RGB"))).permute(2, 0, 1)
    # lossy formats and CMYK round trips differ a little; a wrong channel order or an alpha
    # channel left in would differ by far more
    assert (image.float() - reference.float()).abs().mean() < 6


def test_lossless_png_is_exact(cat):
    image = decode_rgb(encode(cat, "PNG"), LIMIT)
    assert torch.equal(image, torch.from_numpy(np.array(cat)).permute(2, 0, 1))


def test_sixteen_bit_png_is_scaled_to_eight_bits():
    ramp = (np.arange(256 * 256, dtype=np.uint32) % 65536).astype(np.uint16).reshape(256, 256)
    image = decode_rgb(encode(Image.fromarray(ramp), "PNG"), LIMIT)
    assert image.dtype == torch.uint8 and image.shape == (3, 256, 256)
    assert image[0, 0, 0] == 0 and image[0, -1, -1] == 255
    expected = torch.from_numpy((ramp.astype(np.float64) * 255 / 65535).round().astype(np.uint8))
    assert (image[0].int() - expected.int()).abs().max() <= 1


def test_animated_gif_and_webp_give_the_first_frame(cat):
    rotated = cat.transpose(Image.Transpose.ROTATE_180)
    for fmt in ("GIF", "WEBP"):
        blob = encode(cat, fmt, save_all=True, append_images=[rotated])
        first = decode_rgb(blob, LIMIT)
        assert first.shape == (3, 300, 451)
        still = decode_rgb(encode(cat, fmt), LIMIT)
        assert (first.float() - still.float()).abs().mean() < 3, fmt


def test_exif_orientation_is_honoured(cat):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image = decode_rgb(encode(cat, "JPEG", exif=exif.tobytes()), LIMIT)
    assert image.shape == (3, 451, 300)


def test_tiny_image(cat):
    assert decode_rgb(encode(cat.resize((1, 1)), "PNG"), LIMIT).shape == (3, 1, 1)


def test_truncated_jpeg_is_refused(cat):
    blob = encode(cat, "JPEG")
    with pytest.raises(CorruptImage, match="truncated"):
        decode_rgb(blob[: len(blob) // 2], LIMIT)


def test_truncated_png_is_refused(cat):
    blob = encode(cat, "PNG")
    with pytest.raises(CorruptImage):
        decode_rgb(blob[: len(blob) // 3], LIMIT)


def jpeg_segments(blob: bytes):
    """(marker, offset) of each segment before the scan data: SOI, APPn, DQT, SOF, DHT..., SOS."""
    assert blob[:2] == b"\xff\xd8"
    offset, found = 2, [(0xD8, 0)]
    while True:
        assert blob[offset] == 0xFF, offset
        marker = blob[offset + 1]
        found.append((marker, offset))
        if marker == 0xDA:
            return found
        offset += 2 + int.from_bytes(blob[offset + 2:offset + 4], "big")


def test_jpeg_whose_scan_header_is_wiped_is_refused(cat):
    """Pillow's JPEG of the cat puts its last Huffman table and the start-of-scan (SOS) header at bytes
    ~430-622, so zeroing 3.4 kB from byte 600 wipes the SOS marker and the scan's start: the tables are
    there, the end-of-image marker too (so it is not refused as truncated), but there is no scan to decode."""
    blob = bytearray(encode(cat, "JPEG"))
    (sos,) = [offset for marker, offset in jpeg_segments(bytes(blob)) if marker == 0xDA]
    assert 600 < sos < 4000
    blob[600:4000] = bytes(3400)
    assert blob.endswith(b"\xff\xd9")
    with pytest.raises(CorruptImage, match=r"the JPEG image cannot be decoded \(.*missing SOS marker"):
        decode_rgb(bytes(blob), LIMIT)


@pytest.mark.parametrize("blob", [b"hello, this is text", b"%PDF-1.4 ...", bytes(range(256)) * 4])
def test_non_images_are_unsupported_media(blob):
    with pytest.raises(UnsupportedMediaType, match="not a recognised image"):
        decode_rgb(blob, LIMIT)


def test_unsupported_image_format_names_the_supported_ones(cat):
    with pytest.raises(UnsupportedMediaType, match="TIFF.*JPEG, PNG, WebP, GIF or BMP"):
        decode_rgb(encode(cat, "TIFF"), LIMIT)


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    blob = encode(Image.new("1", (8000, 6000)), "PNG")  # 48 MP declared, ~6 kB on the wire
    with pytest.raises(ImageTooLarge, match="8000x6000 = 48.0 megapixels; the limit is 40"):
        read_header(blob, LIMIT)
    assert read_header(blob, 50_000_000).width == 8000


def test_decompression_bomb_is_refused_as_too_large():
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")  # 400 MP in ~50 kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge) as err:
        decode_rgb(bomb, LIMIT)
    assert err.value.status == 413
