"""Image bytes -> RGB uint8 tensor [3, H, W], with the size checked before any pixel is decoded.

JPEG and WebP decode with torchvision.io (libjpeg-turbo / libwebp straight into a tensor; JPEG's
EXIF orientation applied by torchvision, WebP's here). PNG, GIF and BMP go through Pillow:
torchvision.io has no BMP decoder, its GIF decoder expands every frame of an animation when only
the first is wanted, and its PNG decoder (0.29) crashes the whole process with a segmentation
fault on any libpng error met while reading pixels (a bad CRC, a damaged zlib stream, a bad row
filter byte): one corrupt PNG would kill the worker and every request batched with it.
Pillow also reads the header first (format and declared size) without decoding pixels, which is
how a decompression bomb is refused before it costs memory.

Damaged pixel data. libjpeg does not fail on a JPEG whose entropy-coded (scan) data is damaged: it
prints one warning ("Corrupt JPEG data: premature end of data segment") and fills what it could not
decode with flat gray, so a JPEG whose scan was zeroed or cut short (with its end-of-image marker
kept) decodes to a meaningless image. That warning is the decoder's only signal; torchvision lets
libjpeg print it on file descriptor 2 and Pillow discards it, so the JPEG decode reads it back from
fd 2 (_libjpeg_warning) and a warning that means damaged pixels is a CorruptImage. A PNG's pixel
data is checked by zlib's Adler-32 (Pillow refuses a damaged stream), but Pillow does not check the
IDAT chunks' CRCs, as libpng does: that is done here (_refuse_bad_png_crc).
"""

import functools
import io
import os
import re
import sys
import tempfile
import threading
import warnings
import zlib
from typing import Callable, NamedTuple, Optional, Tuple, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from handlers.request_errors import CorruptImage, ImageTooLarge, UnsupportedMediaType, clip

TORCHVISION_FORMATS = {"JPEG", "MPO", "WEBP"}  # MPO: multi-picture JPEG from cameras
PILLOW_FORMATS = {"PNG", "GIF", "BMP"}  # and animated WebP, which torchvision.io refuses
SUPPORTED = "JPEG, PNG, WebP, GIF or BMP"

JPEG_END_OF_IMAGE = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# libjpeg's warnings that mean pixels were not decoded from the file's data (jerror.h: JWRN_HIT_MARKER,
# JWRN_HUFF_BAD_CODE, JWRN_ARITH_BAD_CODE, JWRN_MUST_RESYNC, JWRN_JPEG_EOF). Its other warnings (an
# unknown Adobe transform or JFIF revision, a bad ICC marker) are about metadata and are let through.
JPEG_DAMAGE_WARNING = re.compile(
    r"Corrupt JPEG data: (?:premature end of data segment|bad Huffman code|bad arithmetic code"
    r"|found marker 0x[0-9a-f]{2} instead of RST\d)|Premature end of JPEG file")
# JWRN_EXTRANEOUS_DATA: the scan ended with N bytes of its data unused. A few bytes of encoder
# padding are common in real photos and harmless (the whole image was decoded); when most of the
# file went unused (a zeroed progressive or restart-marker scan leaves ~90%), the pixels shown are
# not what the file carries.
JPEG_EXTRANEOUS_WARNING = re.compile(r"Corrupt JPEG data: (\d+) extraneous bytes before marker 0x[0-9a-f]{2}")
# Cheap tests that send a JPEG decoded by Pillow (which discards libjpeg's warnings) to a second,
# warning-reading decode: libjpeg's fill of a baseline scan cut short leaves the last MCU row one
# flat colour, and a zeroed scan is long runs of zero bytes. Both also occur in valid images (a flat
# bottom edge; a flat area coded with optimised Huffman tables, whose shortest codes are all zero
# bits), which only pay the second decode and are then accepted: neither refuses anything alone.
JPEG_ZERO_RUN = bytes(64)
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_GRAY_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageHeader(NamedTuple):
    format: str
    width: int
    height: int
    animated: bool = False
    orientation: int = 1  # EXIF orientation, read here for WebP only (torchvision ignores it there)


class ImageInput(NamedTuple):
    """One request's image as read before decoding (each image is read once: budgets, then decode)."""

    data: bytes           # the image bytes
    topk: int             # the top-k the request asks for (classifiers)
    header: ImageHeader   # format and declared size, from the header only


def read_header(data: bytes, max_pixels: int) -> ImageHeader:
    """Format and declared size, from the header only; refuses unsupported and oversized images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                animated = image.format == "WEBP" and getattr(image, "is_animated", False)
                orientation = _orientation(image) if image.format == "WEBP" else 1
                header = ImageHeader(image.format, image.width, image.height, animated, orientation)
    except Image.DecompressionBombError:
        raise ImageTooLarge(
            f"image declares over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels "
            f"(the limit is {max_pixels / 1e6:g}): resize it before sending"
        ) from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"the body is not a recognised image; send {SUPPORTED} bytes"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise CorruptImage(f"the image header cannot be read ({clip(str(err), 120)})") from None
    if header.format not in TORCHVISION_FORMATS | PILLOW_FORMATS:
        raise UnsupportedMediaType(f"{header.format} images are not supported; send {SUPPORTED}")
    if header.width < 1 or header.height < 1:
        raise CorruptImage(f"image declares an empty size {header.width}x{header.height}")
    pixels = header.width * header.height
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"image is {header.width}x{header.height} = {pixels / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:g} megapixels: resize it before sending"
        )
    return header


def decode_rgb(data: bytes, max_pixels: int, min_short_side: Optional[int] = None,
               header: Optional[ImageHeader] = None) -> torch.Tensor:
    """RGB uint8 [3, H, W] of the first frame: gray, palette, CMYK, alpha and 16-bit made RGB8.

    With `min_short_side`, a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling), keeping the short side >= min_short_side: the model only sees the
    resized image, and a 2048x1536 photo then decodes in a fraction of the time. `header`: the one
    read_header gave for these bytes (read again when not given)."""
    header = header or read_header(data, max_pixels)
    if (min_short_side and header.format in ("JPEG", "MPO")
            and min(header.width, header.height) >= 2 * min_short_side):
        return _decode_jpeg_reduced(data, header, min_short_side)
    if header.format in TORCHVISION_FORMATS and not header.animated:
        image = _decode_with_torchvision(data, header)
        if header.format == "WEBP":  # torchvision applies EXIF orientation to JPEG only
            image = apply_orientation(image, header.orientation)
    else:
        image = _decode_with_pillow(data)
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = F.to_dtype(image, torch.uint8, scale=True)
    return image


def _refuse_bad_png_crc(data: bytes) -> None:
    """A PNG whose IDAT (pixel data) chunk fails its CRC is damaged; Pillow checks the CRCs of the other
    chunks it reads but not IDAT's. Chunks cut short are left to Pillow, which reports truncation."""
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind, end = bytes(view[pos + 4:pos + 8]), pos + 8 + length
        if kind == b"IEND" or end + 4 > len(data):
            return
        if kind in (b"IDAT", b"fdAT") and zlib.crc32(view[pos + 4:end]) != int.from_bytes(view[end:end + 4], "big"):
            raise CorruptImage(
                f"the PNG image data is damaged ({kind.decode()} chunk at byte {pos} fails its CRC)")
        pos = end + 4


T = TypeVar("T")
_fd2_lock = threading.Lock()
_fd2_sink: Tuple[int, Optional[object]] = (-1, None)  # (pid, scratch file) for this process


def _libjpeg_warning(decode: Callable[[], T]) -> Tuple[T, str]:
    """decode()'s result and what it printed on file descriptor 2, where libjpeg prints its first
    warning (torchvision keeps libjpeg's default message output; there is no other way to read it).

    fd 2 points at a scratch file for the decode only, and whatever was printed is written back to
    the real fd 2 afterwards, so the worker log keeps libjpeg's line as before (and any other
    thread's). The lock keeps two decodes' redirections from interleaving. Cost: 6 system calls,
    ~3 us (a 640x480 JPEG decodes in ~900 us)."""
    global _fd2_sink
    with _fd2_lock:
        if _fd2_sink[0] != os.getpid():  # one scratch file per process, never shared across a fork
            _fd2_sink = (os.getpid(), tempfile.TemporaryFile(buffering=0))
        sink = _fd2_sink[1].fileno()
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink, 2)
        try:
            result = decode()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            printed = os.lseek(sink, 0, os.SEEK_CUR)
            text = b""
            if printed:
                os.lseek(sink, 0, os.SEEK_SET)
                text = os.read(sink, printed)
                os.ftruncate(sink, 0)
                os.lseek(sink, 0, os.SEEK_SET)
                os.write(2, text)
    return result, text.decode("utf-8", "replace")


def _refuse_damaged_jpeg(data: bytes, printed: str) -> None:
    """CorruptImage when libjpeg's warning says the pixels were not all decoded from the data."""
    damage = JPEG_DAMAGE_WARNING.search(printed)
    if damage:
        raise CorruptImage(f"the JPEG image data is damaged (libjpeg: {damage.group(0)})")
    unused = JPEG_EXTRANEOUS_WARNING.search(printed)
    if unused and 2 * int(unused.group(1)) > len(data):
        raise CorruptImage(f"the JPEG image data is damaged: most of it was not used "
                           f"(libjpeg: {unused.group(0)} in a file of {len(data)} bytes)")


def _refuse_truncated_jpeg(data: bytes) -> None:
    # libjpeg only warns on a truncated stream and fills the rest with gray: refuse it here.
    if JPEG_END_OF_IMAGE not in data[-1024:]:
        raise CorruptImage("the JPEG data is truncated (no end-of-image marker)")


def _decode_jpeg_reduced(data: bytes, header: ImageHeader, min_short_side: int) -> torch.Tensor:
    """A large JPEG decoded at reduced scale (torchvision.io has no DCT scaling; Pillow's draft does)."""
    _refuse_truncated_jpeg(data)
    short = min(header.width, header.height)
    wanted = (-(-header.width * min_short_side // short), -(-header.height * min_short_side // short))
    stored, orientation = _pillow_rgb(data, draft_size=wanted)
    last_row = stored[:, -1]
    if bool((last_row == last_row[:, :1]).all()) or JPEG_ZERO_RUN in data:
        # Pillow discards libjpeg's warnings: a full decode that reads them (see JPEG_ZERO_RUN)
        _decode_with_torchvision(data, header)
    return apply_orientation(stored, orientation)


def _decode_with_torchvision(data: bytes, header: ImageHeader) -> torch.Tensor:
    if header.format in ("JPEG", "MPO"):
        _refuse_truncated_jpeg(data)
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    decode = functools.partial(decode_image, encoded, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    try:
        if header.format in ("JPEG", "MPO"):
            image, printed = _libjpeg_warning(decode)
            _refuse_damaged_jpeg(data, printed)
        else:
            image = decode()
    except RuntimeError as err:
        raise CorruptImage(f"the {header.format} image cannot be decoded ({_first_line(err)})") from None
    return image


def _decode_with_pillow(data: bytes) -> torch.Tensor:
    """The first frame through Pillow, as displayed (EXIF orientation applied)."""
    if data.startswith(PNG_SIGNATURE):
        _refuse_bad_png_crc(data)
    return apply_orientation(*_pillow_rgb(data))


def _pillow_rgb(data: bytes, draft_size: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, int]:
    """The first frame through Pillow as stored, and its EXIF orientation; `draft_size` lets a JPEG
    decode at the largest DCT reduction whose size is still >= draft_size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            if draft_size:
                image.draft("RGB", draft_size)
            image.load()
            orientation = _orientation(image)
            if image.mode in SIXTEEN_BIT_GRAY_MODES:  # 16-bit gray PNG: convert("RGB") would clip
                rgb = _scale_to_uint8(np.asarray(image)).expand(3, -1, -1).contiguous()
            else:
                rgb = F.pil_to_tensor(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise CorruptImage(f"the image cannot be decoded ({clip(str(err), 120)})") from None
    return rgb, orientation


def _scale_to_uint8(gray16: np.ndarray) -> torch.Tensor:
    """[1, H, W] uint8 from 16-bit gray values, rounded as to_dtype(scale=True) does."""
    wide = gray16.astype(np.uint32).clip(0, 65535)
    return torch.from_numpy(((wide * 255 + 32767) // 65535).astype(np.uint8)).unsqueeze(0)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored); damaged EXIF data is ignored, not fatal."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # Pillow's EXIF parser raises many types on damaged metadata
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a [C, H, W] image as stored into the image as displayed, for EXIF orientation 1-8
    (the same transposes as PIL.ImageOps.exif_transpose)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1).contiguous()
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def _first_line(err: Exception) -> str:
    """libjpeg/libpng's own words, without torchvision's C++ source location."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return clip(re.split(r"\.cpp:\d+, ", text)[-1], 120)
