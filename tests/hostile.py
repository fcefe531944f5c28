"""A corpus of odd and hostile image files, written in memory: every mode and bit depth Pillow can
write in a format we read, animated and multi-page files, thin images on both sides of the
aspect-ratio limit, formats we refuse, and broken files. Shared by the engine, page and browser
tests (and reusable by anyone hardening another path).

``corpus()`` returns ``Specimen``s: a file name, its bytes, and whether the engine accepts it
(``refusal`` is a regex the refusal message must match, ``note`` one a note must match).
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Specimen:
    name: str
    data: bytes
    refusal: str | None = None  # None: accepted
    note: str | None = None  # accepted with a note matching this

    @property
    def accepted(self) -> bool:
        return self.refusal is None


def saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(mode: str, size=(24, 16)) -> Image.Image:
    """A non-flat test picture in ``mode`` (so a stretch or a palette has something to do)."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    rgb = Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))
    if mode in ("RGBA", "LA", "PA"):
        out = rgb.convert(mode.replace("PA", "RGBA"))
        out.putalpha(Image.fromarray(y.astype(np.uint8)))
        return out.convert("PA") if mode == "PA" else out
    if mode == "I;16":
        return Image.fromarray((x * 257).astype(np.uint16))
    if mode == "I":
        return Image.fromarray((x * 1000 - 50_000).astype(np.int32))
    if mode == "F":
        return Image.fromarray(x / 255.0 - 0.5)
    return rgb.convert(mode)


# -- raw writers for what Pillow will not write itself ---------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def raw_png(width: int, height: int, depth: int = 8, colour_type: int = 0, rows: bytes | None = None,
            extra: bytes = b"") -> bytes:
    """A PNG with any header; ``rows`` are the filtered scanlines (default: zeros, only if small)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    if rows is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
        row = 1 + (width * channels * depth + 7) // 8
        rows = zlib.compress(bytes(row * height), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def thin_png(width: int, height: int) -> bytes:
    """A 1-bit PNG of any size whose compressed rows stay tiny: the aspect-ratio bomb."""
    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return raw_png(width, height, 1, 0, body)


def raw_tiff(pixels: np.ndarray, photometric: int, sample_format: int = 1) -> bytes:
    """An uncompressed little-endian TIFF of an (H, W) or (H, W, C) array (uint16 RGB, float32, ...)."""
    arr = np.ascontiguousarray(pixels)
    height, width = arr.shape[:2]
    spp = 1 if arr.ndim == 2 else arr.shape[2]
    bits = arr.dtype.itemsize * 8
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, spp, None), (259, 3, 1, 1), (262, 3, 1, photometric),
            (273, 4, 1, None), (277, 3, 1, spp), (278, 4, 1, height), (279, 4, 1, len(data)),
            (284, 3, 1, 1), (339, 3, spp, sample_format)]
    head = 8 + 2 + 12 * len(tags) + 4
    extra = struct.pack(f"<{spp}H", *[bits] * spp) + struct.pack(f"<{spp}H", *[sample_format] * spp)
    offsets = {258: head, 339: head + 2 * spp}
    data_at = head + len(extra)
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        if tag == 273:
            value = data_at
        if tag in offsets and spp > 1:
            out += struct.pack("<HHII", tag, kind, count, offsets[tag])
        elif tag in (258, 339):
            out += struct.pack("<HHIHH", tag, kind, count, bits if tag == 258 else sample_format, 0)
        elif kind == 3:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    return out + b"\x00\x00\x00\x00" + extra + data


def float_tiff(values) -> bytes:
    return raw_tiff(np.asarray(values, dtype=np.float32), photometric=1, sample_format=3)


def animated(fmt: str, frames: int = 3, **kw) -> bytes:
    imgs = [Image.new("RGB", (20, 20), (60 * i, 120, 200 - 50 * i)) for i in range(frames)]
    return saved(imgs[0], fmt, save_all=True, append_images=imgs[1:], **kw)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return saved(gradient("RGB", (40, 20)), "JPEG", exif=exif.tobytes())


def corpus() -> list[Specimen]:
    """Every specimen; names are unique and end in the suffix a user would give them."""
    s: list[Specimen] = []
    for mode in ("1", "L", "P", "RGB", "RGBA", "LA", "I;16"):
        s.append(Specimen(f"mode-{mode.replace(';', '')}.png", saved(gradient(mode), "PNG")))
    for mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "I", "I;16", "F"):
        s.append(Specimen(f"mode-{mode.replace(';', '')}.tiff", saved(gradient(mode), "TIFF")))
    s += [
        Specimen("mode-I16B.tiff", saved(Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 150).astype(">u2")), "TIFF")),
        Specimen("rgb16.tiff", raw_tiff((np.arange(24 * 16 * 3).reshape(16, 24, 3) * 50).astype(np.uint16), 2)),
        Specimen("rgb16.png", raw_png(24, 16, 16, 2)),
        Specimen("rgba16.png", raw_png(24, 16, 16, 6)),
        Specimen("la16.png", raw_png(24, 16, 16, 4)),
        Specimen("grey4.png", raw_png(24, 16, 4, 0)),
        Specimen("palette-alpha.png", saved(gradient("P"), "PNG", transparency=0)),
        Specimen("palette-alpha.gif", saved(gradient("P"), "GIF", transparency=3)),
        Specimen("cmyk.jpg", saved(gradient("CMYK"), "JPEG")),
        Specimen("grey.jpg", saved(gradient("L"), "JPEG")),
        Specimen("progressive.jpg", saved(gradient("RGB"), "JPEG", progressive=True)),
        Specimen("exif-rotated.jpg", exif_rotated_jpeg()),
        Specimen("rgba.webp", saved(gradient("RGBA"), "WEBP", lossless=True)),
        Specimen("bilevel.bmp", saved(gradient("1"), "BMP")),
        Specimen("palette.bmp", saved(gradient("P"), "BMP")),
        Specimen("float-nan.tiff", float_tiff([[np.nan, np.inf, 0.25], [-np.inf, 0.5, 1.0]] * 3),
                 note="NaN or infinite"),
        Specimen("animated.gif", animated("GIF", duration=50, loop=0), note="first one is used"),
        Specimen("animated.png", animated("PNG"), note="first one is used"),
        Specimen("animated.webp", animated("WEBP"), note="first one is used"),
        Specimen("pages.tiff", animated("TIFF"), note="first one is used"),
        Specimen("stereo.jpg", animated("MPO", frames=2), note="first one is used"),
        # thin, on both sides of the 20:1 limit
        Specimen("thin-1x20.png", thin_png(1, 20)),
        Specimen("thin-20x1.png", thin_png(20, 1)),
        Specimen("thin-3x60.png", saved(gradient("RGB", (3, 60)), "PNG")),
        Specimen("thin-400x20.png", saved(gradient("RGB", (400, 20)), "PNG")),
        Specimen("thin-1x21.png", thin_png(1, 21), refusal="aspect ratio of 21:1; the limit is 20:1"),
        Specimen("thin-1x14000.png", thin_png(1, 14_000), refusal="aspect ratio of 14,000:1"),
        Specimen("thin-1x300000.png", thin_png(1, 300_000), refusal="aspect ratio of 300,000:1"),
        Specimen("thin-300000x1.png", thin_png(300_000, 1), refusal="aspect ratio of 300,000:1"),
        # refused formats and broken files
        Specimen("icon.ico", saved(gradient("RGB"), "ICO"), refusal="is an ICO file; this tool reads PNG, JPEG"),
        Specimen("picture.ppm", saved(gradient("RGB"), "PPM"), refusal="is a PPM file"),
        Specimen("notes.png", b"this is text, not pixels\n" * 4, refusal="not an image this tool can read"),
        Specimen("empty.png", b"", refusal="empty"),
        Specimen("cut.png", saved(gradient("RGB", (64, 64)), "PNG")[:120], refusal="corrupt or truncated|damaged"),
        Specimen("bad-header.png", b"\x89PNG\r\n\x1a\n not really", refusal="damaged"),
        Specimen("all-nan.tiff", float_tiff([[np.nan, np.nan], [np.inf, -np.inf]]), refusal="no finite pixel"),
        Specimen("bomb.png", thin_png(8_000, 8_000), refusal="megapixels"),
    ]
    assert len({x.name for x in s}) == len(s)
    return s


SIGNATURES = {  # a valid small file per format, as seeds for header fuzzing
    "png": saved(gradient("RGB", (8, 6)), "PNG"),
    "gif": saved(gradient("P", (8, 6)), "GIF"),
    "tiff": saved(gradient("RGB", (8, 6)), "TIFF"),
    "bmp": saved(gradient("RGB", (8, 6)), "BMP"),
    "jpeg": saved(gradient("RGB", (8, 6)), "JPEG"),
    "webp": saved(gradient("RGB", (8, 6)), "WEBP"),
}


def with_dimensions(fmt: str, width: int, height: int) -> bytes:
    """The seed file of ``fmt`` with its header's width and height overwritten (pixels unchanged)."""
    data = bytearray(SIGNATURES[fmt])
    if fmt == "png":
        data[16:24] = struct.pack(">II", width % 2**32, height % 2**32)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    elif fmt == "gif":
        data[6:10] = struct.pack("<HH", width % 2**16, height % 2**16)
    elif fmt == "bmp":
        data[18:26] = struct.pack("<ii", width % 2**31, height % 2**31)
    elif fmt == "jpeg":
        at = data.find(b"\xff\xc0")
        data[at + 5:at + 9] = struct.pack(">HH", height % 2**16, width % 2**16)
    elif fmt == "tiff":
        count = struct.unpack_from("<H", data, 8)[0]
        for i in range(count):
            at = 10 + 12 * i
            tag, kind = struct.unpack_from("<HH", data, at)
            if tag in (256, 257):
                value = (width if tag == 256 else height) % 2**16 if kind == 3 else (width if tag == 256 else height) % 2**32
                struct.pack_into("<H" if kind == 3 else "<I", data, at + 8, value)
    elif fmt == "webp":
        at = data.find(b"VP8")
        if data[at:at + 4] == b"VP8 ":
            struct.pack_into("<HH", data, at + 14, width % 2**14, height % 2**14)
    return bytes(data)
