"""Hostile and unusual inputs, built from real photos at test time (nothing binary is checked in).

Shared by the unit tests (tests/unit/test_image_decoding_hostile.py) and the hostile-input suite
against the real server (tests/integration/test_hostile_input.py).
"""

import io
import struct
import zlib
from typing import Iterator, List, Tuple

import numpy as np
from PIL import Image

from support import encode, photo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112
# For each EXIF orientation, the transpose that stores an upright image so that a viewer which
# honours the tag shows it upright again (the inverse of PIL.ImageOps.exif_transpose's).
STORE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def cat() -> Image.Image:
    return Image.fromarray(photo("chelsea"))  # 451x300 RGB


# ---- PNG surgery -----------------------------------------------------------------------------
def png_chunks(png: bytes) -> Iterator[Tuple[bytes, bytes]]:
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        yield png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        pos += 12 + length


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def build_png(chunks: List[Tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(png_chunk(kind, data) for kind, data in chunks)


def _rebuilt_with_pixels(png: bytes, edit) -> bytes:
    """The PNG with its (single, re-compressed) IDAT stream replaced by edit(raw scanlines)."""
    chunks = list(png_chunks(png))
    raw = bytearray(zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT")))
    idat = edit(raw, chunks[0][1])
    out, placed = [], False
    for kind, data in chunks:
        if kind != b"IDAT":
            out.append((kind, data))
        elif not placed:
            out.append((b"IDAT", idat))
            placed = True
    return build_png(out)


def png_with_bad_row_filter(png: bytes, row: int = 0) -> bytes:
    """Valid chunks and CRCs, but one scanline names filter type 7 (only 0-4 exist)."""
    def edit(raw, ihdr):
        width, _, depth, color_type = struct.unpack(">IIBB", ihdr[:10])
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
        raw[row * (1 + width * channels * depth // 8)] = 7
        return zlib.compress(bytes(raw))
    return _rebuilt_with_pixels(png, edit)


def png_with_damaged_zlib(png: bytes) -> bytes:
    """Valid CRCs around a deflate stream whose Adler-32 checksum is wrong."""
    return _rebuilt_with_pixels(png, lambda raw, ihdr: zlib.compress(bytes(raw))[:-4] + b"\0\0\0\0")


def png_with_bad_idat_crc(png: bytes) -> bytes:
    blob, pos = bytearray(png), len(PNG_SIGNATURE)
    for kind, data in png_chunks(png):
        if kind == b"IDAT":
            blob[pos + 8 + len(data)] ^= 0xFF
            return bytes(blob)
        pos += 12 + len(data)
    raise ValueError("no IDAT chunk")


def png_declaring(width: int, height: int) -> bytes:
    """A ~1 kB gray PNG whose header declares width x height (a decompression bomb)."""
    stream = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    data = b"".join(stream.compress(row) for _ in range(32)) + stream.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return build_png([(b"IHDR", ihdr), (b"IDAT", data), (b"IEND", b"")])


def png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG of an HxWx3 uint16 array (Pillow cannot write one)."""
    height, width, _ = array.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return build_png([(b"IHDR", ihdr), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")])


def png16_gray(image: Image.Image) -> bytes:
    """A 16-bit gray PNG of a photo (values spread over the whole 16-bit range)."""
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def png_with_zeroed_idat(png: bytes) -> bytes:
    """Every IDAT chunk's data overwritten with zeros, CRCs recomputed: chunks intact, no zlib stream."""
    return build_png([(kind, bytes(len(data)) if kind == b"IDAT" else data) for kind, data in png_chunks(png)])


# ---- JPEG surgery ----------------------------------------------------------------------------
JPEG_END_OF_IMAGE = b"\xff\xd9"


def jpeg_scan_start(jpeg: bytes) -> int:
    """The offset of the first scan's entropy-coded data: the byte after the first SOS segment."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    pos = 2
    while jpeg[pos] == 0xFF:
        marker, length = jpeg[pos + 1], int.from_bytes(jpeg[pos + 2:pos + 4], "big")
        pos += 2 + length
        if marker == 0xDA:
            return pos
    raise ValueError(f"no SOS segment before byte {pos}")


def jpeg_with_zeroed_scan(jpeg: bytes) -> bytes:
    """Every header through the first SOS kept, every byte from there to the end-of-image marker zeroed
    (for a progressive or restart-marker JPEG that wipes the later scans' headers and RST markers too)."""
    assert jpeg.endswith(JPEG_END_OF_IMAGE)
    start = jpeg_scan_start(jpeg)
    return jpeg[:start] + bytes(len(jpeg) - start - 2) + JPEG_END_OF_IMAGE


def jpeg_cut_in_scan(jpeg: bytes, fraction: float = 0.5, end_marker: bool = True) -> bytes:
    """The JPEG cut `fraction` of the way through its data after the first SOS header; with
    `end_marker`, an end-of-image marker is put back (as a careless repair or a transfer tool does)."""
    start = jpeg_scan_start(jpeg)
    cut = jpeg[:start + int((len(jpeg) - 2 - start) * fraction)]
    return cut + JPEG_END_OF_IMAGE if end_marker else cut


# ---- EXIF orientation ------------------------------------------------------------------------
def with_orientation(upright: Image.Image, orientation: int, fmt: str = "JPEG", **save_kwargs) -> bytes:
    """Pixels stored so that a viewer honouring EXIF `orientation` shows `upright`."""
    stored = upright.transpose(STORE_TRANSPOSE[orientation]) if orientation != 1 else upright
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(stored, fmt, exif=exif.tobytes(), **save_kwargs)


def displayed(blob: bytes) -> np.ndarray:
    """What an EXIF-aware viewer shows (Pillow's exif_transpose), as HxWx3 uint8."""
    from PIL import ImageOps
    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


# ---- other forms -----------------------------------------------------------------------------
def animated_gif(first: Image.Image, frames: int = 3) -> bytes:
    others = [first.transpose(Image.Transpose.ROTATE_180).convert("P")] * (frames - 1)
    return encode(first.convert("P"), "GIF", save_all=True, append_images=others, duration=100, loop=0)


def cmyk_jpeg(image: Image.Image) -> bytes:
    return encode(image.convert("CMYK"), "JPEG", quality=95)
