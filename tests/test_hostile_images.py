"""Hostile and odd images against the engine: each is decoded to RGB or refused with one clear
``ImageError``; nothing else escapes, no numpy warning is printed, and memory stays bounded.

The corpus lives in tests/hostile.py; memory is measured as the peak RSS of a fresh process
(Pillow's pixel buffers are invisible to tracemalloc)."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbm_core.errors import CBMError, ImageError
from cbm_core.data.images import (FORMATS, FORMATS_TEXT, IMAGE_SUFFIXES, MAX_ASPECT_RATIO, decode_image, load_image,
                             thumbnail)
from hostile import corpus, float_tiff, saved, thin_png

ROOT = Path(__file__).resolve().parent.parent
CORPUS = corpus()
pytestmark = pytest.mark.filterwarnings("error")  # a RuntimeWarning on the way is a failure


@pytest.mark.parametrize("specimen", CORPUS, ids=[s.name for s in CORPUS])
def test_every_specimen_is_decoded_to_rgb_or_refused_with_a_reason(specimen):
    if specimen.accepted:
        decoded = load_image(specimen.data, specimen.name)
        assert decoded.image.mode == "RGB" and min(decoded.image.size) >= 1
        if specimen.note:
            assert any(re.search(specimen.note, n) for n in decoded.notes), decoded.notes
        else:
            assert decoded.notes == ()
        return
    with pytest.raises(ImageError) as info:
        decode_image(specimen.data, specimen.name)
    message = str(info.value)
    assert specimen.name in message and re.search(specimen.refusal, message), message
    assert "again" not in message  # the CLI shows these too: no "upload again"


def test_an_aspect_ratio_bomb_is_refused_from_its_header_with_our_limit():
    data = thin_png(1, 300_000)
    assert len(data) < 2_000  # a few hundred bytes, 300,000 pixels: passes any pixel cap
    with pytest.raises(ImageError, match=rf"1×300,000 pixels.*the limit is {MAX_ASPECT_RATIO}:1"):
        decode_image(data, "tall.png")
    assert decode_image(thin_png(1, MAX_ASPECT_RATIO), "ok.png").size == (1, MAX_ASPECT_RATIO)


def test_refusals_name_the_format_with_the_right_article_and_list_every_format_we_read():
    ico = next(s for s in CORPUS if s.name == "icon.ico")
    with pytest.raises(ImageError) as info:
        decode_image(ico.data, ico.name)
    assert "is an ICO file" in str(info.value) and FORMATS_TEXT in str(info.value)
    for fmt in FORMATS:
        assert fmt.label in FORMATS_TEXT and set(fmt.suffixes) <= IMAGE_SUFFIXES
    with pytest.raises(ImageError, match="is a PPM file"):
        decode_image(saved(Image.new("RGB", (4, 4)), "PPM"), "x.ppm")


def test_nan_and_inf_are_mapped_deterministically_and_said():
    data = float_tiff([[np.nan, np.inf, -np.inf], [0.0, 0.5, 1.0]])
    first, again = load_image(data, "f.tiff"), load_image(data, "f.tiff")
    grey = np.asarray(first.image)[..., 0]
    assert grey.tolist() == [[0, 255, 0], [0, 128, 255]]  # NaN, +inf, -inf; then 0 .. 1 stretched
    assert np.array_equal(grey, np.asarray(again.image)[..., 0])
    assert first.notes == ("'f.tiff' has 3 pixels that are NaN or infinite; NaN and -inf are shown black, +inf white.",)


def test_sixteen_bit_and_integer_images_are_stretched_not_clipped():
    img = Image.fromarray(np.array([[1000, 2000], [3000, 4000]], dtype=np.uint16))
    grey = np.asarray(decode_image(saved(img, "PNG")))[..., 0]
    assert grey.tolist() == [[0, 85], [170, 255]]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                                  "LAB", "HSV", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"])
def test_thumbnail_turns_every_pillow_mode_into_bounded_rgb(mode):
    out = thumbnail(Image.new(mode, (1200, 90)), max_side=640)
    assert out.mode == "RGB" and out.size == (640, 48)


def test_thumbnail_never_enlarges_and_never_makes_a_zero_side():
    assert thumbnail(Image.new("RGB", (1, 20))).size == (1, 20)
    assert thumbnail(Image.new("RGB", (20_000, 1_000)), max_side=640).size == (640, 32)
    assert thumbnail(Image.new("RGB", (5_000, 3)), max_side=100).size == (100, 1)


def test_folders_devices_pipes_and_links_to_devices_are_refused_without_reading(tmp_path):
    (tmp_path / "photos").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    # In a child process with a timeout: opening a FIFO the ordinary way would wait forever.
    code = textwrap.dedent("""
        import sys
        from cbm_core.errors import ImageError
        from cbm_core.data.images import decode_image
        for path in sys.argv[1:]:
            try:
                decode_image(path)
            except ImageError as exc:
                print(exc)
    """)
    paths = [tmp_path / "photos", "/dev/zero", tmp_path / "pipe.png", tmp_path / "zero.png", tmp_path / "none.png"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 5, proc.stderr
    assert "is a folder, not an image file" in lines[0]
    assert all("is not a regular file" in line for line in lines[1:4])
    assert "Cannot read image" in lines[4] and "No such file" in lines[4]


def _peak_growth_mib(setup: str, action: str) -> float:
    """Peak RSS growth of a fresh process while it runs ``action`` (after ``setup``)."""
    code = textwrap.dedent("""
        import resource, sys
        {setup}
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        {action}
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    """).format(setup=setup, action=action)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


def test_thin_images_cost_bounded_memory_through_the_model():
    setup = """
from cbm_core import ImageError, Pipeline
from cbm_core.demo.paths import DEMO_BUNDLE
from hostile import thin_png, saved
from PIL import Image
pipe = Pipeline.from_bundle(DEMO_BUNDLE, device="cpu")
pipe.encode(saved(Image.new("RGB", (64, 64)), "PNG"))  # warm: first-call allocations are not the image's
bomb = thin_png(1, 300_000)
widest = saved(Image.new("L", (28_000, 1_400), 128), "PNG")  # 39 megapixels at exactly 20:1
"""
    refused = _peak_growth_mib(setup, """
try:
    pipe.encode(bomb, "tall.png")
    sys.exit("the 1 x 300,000 image was not refused")
except ImageError:
    pass
""")
    assert refused < 32  # refused from the header: nothing decoded, nothing resized
    accepted = _peak_growth_mib(setup, "pipe.encode(widest, 'wide.png')")
    # 39 Mpx: the L image, its RGB copy (3 B/px), the model's resize to 96 x 1,920; not gigabytes.
    assert accepted < 600


# -- fuzzing image headers -----------------------------------------------------------------------
FUZZ = """
import resource
from hypothesis import HealthCheck, given, settings, strategies as st

from cbm_core.errors import CBMError
from cbm_core.data.images import load_image
from hostile import SIGNATURES, with_dimensions

side = st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1), st.sampled_from([1, 20, 21, 6_000, 65_535, 300_000]))
edit = st.tuples(st.integers(0, 95), st.integers(0, 255))


@settings(max_examples=int(sys.argv[1]), deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(SIGNATURES)), side, side, st.lists(edit, max_size=6), st.none() | st.integers(8, 400))
def fuzz(fmt, width, height, edits, cut):
    data = bytearray(with_dimensions(fmt, width, height))
    for at, value in edits:  # stray bytes in the header: bit depth, colour type, tags, chunk lengths
        if at < len(data):
            data[at] = value
    data = bytes(data[:cut] if cut else data)
    try:
        decoded = load_image(data, "fuzz.img")
    except CBMError as exc:
        assert str(exc)
        return
    assert decoded.image.mode == "RGB" and min(decoded.image.size) >= 1

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fuzz()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def test_fuzzed_image_headers_raise_only_cbm_errors_within_bounded_memory():
    # In a fresh process, so the peak RSS is the fuzz's own; a failing example is printed by hypothesis.
    proc = subprocess.run([sys.executable, "-c", "import sys\n" + FUZZ, "200"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # Worst accepted header: 40 Mpx at 4 B/px (RGBA, I, F) plus one RGB copy. Unbounded would be GBs.
    assert float(proc.stdout.split()[-1]) < 1024


def test_a_cbm_error_is_what_callers_catch():
    with pytest.raises(CBMError):
        decode_image(b"\x00" * 10, "zeros.bin")


def test_names_are_echoed_without_control_characters(tmp_path):
    # A name is a stranger's text: an ANSI escape would recolour a terminal, U+202E reorder a message,
    # an undecodable byte fail to print; each is shown as a visible escape instead.
    with pytest.raises(ImageError) as info:
        decode_image(b"not an image", "\x1b[31mred\u202egnp.png")
    assert "\\x1b[31mred\\u202egnp.png" in str(info.value) and "\x1b" not in str(info.value)
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")  # a name that is not UTF-8
    odd.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        decode_image(odd)
    assert "caf\\udce9.png" in str(info.value)
    str(info.value).encode("utf-8")  # printable to any UTF-8 terminal
    with pytest.raises(ImageError, match="Cannot read image"):
        decode_image("a\x00b.png")
