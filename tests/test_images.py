import io

import pytest
from PIL import Image

from cbm_core.errors import ImageError
from cbm_core.data.images import MAX_PIXELS, decode_image


def png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_zero_byte_image_is_a_clear_error(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png.*0 bytes"):
        decode_image(p)


def test_non_image_names_the_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is text, not pixels")
    with pytest.raises(ImageError, match="notes.png.*not an image"):
        decode_image(p)


def test_truncated_image_is_reported_as_corrupt():
    data = png_bytes(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 3], name="cut.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    side = int(MAX_PIXELS ** 0.5) + 100
    data = png_bytes(Image.new("1", (side, side)))  # tiny file, huge canvas
    assert len(data) < 2_000_000
    with pytest.raises(ImageError, match="megapixels|too large"):
        decode_image(data, name="bomb.png")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new(mode, (20, 10))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = decode_image(png_bytes(img, fmt), name=f"{mode}.img")
    assert out.mode == "RGB" and out.size == (20, 10)


def test_transparent_pixels_are_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert decode_image(png_bytes(img)).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(png_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_unsupported_format_is_named():
    data = png_bytes(Image.new("RGB", (8, 8)), "PPM")
    with pytest.raises(ImageError, match="PPM"):
        decode_image(data, name="x.ppm")
