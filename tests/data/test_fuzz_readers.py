"""Fuzzing the image readers: mutated files in every format must decode or fail cleanly.

Each format starts from a small valid seed file written here (TIFF 8/16 bit, GIF palette, PPM,
PGM 8/16 bit, gzipped PPM/PGM, DICOM, JSRT raw ``.IMG``, ``.npy``, BMP); hypothesis applies
byte flips, byte sets, truncations, inserted and deleted chunks and header field corruption
(width, height, bit depth, offsets, counts set to 0, 1, 60000, 2**32 - 1, ...). PNG and JPEG
are fuzzed in ``test_io.py``.

Property: :func:`read_image` and :func:`read_mask` return a float32 image in [0, 1] (a bool
mask) or raise :class:`ImageReadError` naming the file; nothing else escapes, no read takes
more than :data:`READ_SECONDS` of CPU time (:data:`READ_WALL_SECONDS` of wall time), and no
read allocates more than a bounded amount of memory (``tracemalloc`` peak for Python and numpy
allocations, growth of the peak RSS for C libraries). Headers claiming 60000 x 60000 pixels
are refused by the pixel limit before any allocation; tiny uncompressed files claiming large
images under the limit are refused as truncated, also before allocating what they claim.

Budget: ``LOCALDISC_FUZZ_EXAMPLES`` examples per format (default :data:`DEFAULT_EXAMPLES`, which
keeps this file under 30 s, drawn the same way every run; with the variable set, new random
inputs each run; JSRT, whose files are 8 MiB, gets an eighth). The number of inputs
tried per format and their outcomes is printed at the end of the module and, when
``LOCALDISC_FUZZ_REPORT`` names a file, written there as JSON.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
import resource
import struct
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from localdisc.data import io as lio
from localdisc.data.io import JSRT_SIZE, read_image, read_mask, set_max_pixels
from localdisc.errors import ImageReadError

DEFAULT_EXAMPLES = 40
EXAMPLES = int(os.environ.get("LOCALDISC_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
REPORT = os.environ.get("LOCALDISC_FUZZ_REPORT")

pytestmark = [
    pytest.mark.timeout(max(120, EXAMPLES // 2)),  # a hang fails the test
    # Pillow and pydicom warn about the damage they see: expected here.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

#: CPU-time bound of one read of a fuzzed file (they are all tiny, except JSRT's 8 MiB); CPU
#: time, because a loaded 2-core CI machine stalls wall time for seconds now and then.
READ_SECONDS = 2.0
#: Wall-clock bound of one read, for hangs that do not burn CPU.
READ_WALL_SECONDS = 10.0
#: CPU-time bound of a read under tracemalloc, which slows allocation-heavy code up to ~100x
#: (Pillow refusing a BMP palette of 65535 colours: 14 ms, 2 s traced).
TRACED_READ_SECONDS = 20.0
#: Pixel limit for fuzzed reads: the seeds are far below it, mutated headers may claim more.
FUZZ_MAX_PIXELS = 1 << 16
#: Traced (numpy and Python) allocation bound of one read; JSRT decodes 8 MiB legitimately.
READ_PEAK_BYTES = 256 << 20
#: Growth bound of the process's peak resident memory over one read (catches C allocations).
READ_RSS_BYTES = 512 << 20

# Outcomes per format: "decoded" / "ImageReadError"; reported at the end of the module.
TRIED: dict[str, Counter[str]] = {}


# ----------------------------------------------------------------------------- seeds


class Seed:
    """A valid file of one format and the byte ranges of its header fields.

    ``fields`` are ``(offset, length, encoding)`` with encoding ``"<"``/``">"`` (binary
    integers) or ``"ascii"`` (decimal text, replaced by another number's text). For gzipped
    formats ``data`` is the uncompressed content: mutations apply to it before compression,
    and ``outer`` mutations to the compressed bytes.
    """

    def __init__(
        self, suffix: str, data: bytes, fields: list[tuple[int, int, str]], gz: bool = False
    ) -> None:
        self.suffix = suffix
        self.data = data
        self.fields = fields
        self.gz = gz


def _pil_bytes(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _tiff_fields(data: bytes) -> list[tuple[int, int, str]]:
    """Every IFD entry's count and value (classic little-endian TIFF), plus the IFD offset."""
    assert data[:4] == b"II*\x00"
    fields = [(4, 4, "<")]
    ifd = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, ifd)[0]
    fields.append((ifd, 2, "<"))
    for i in range(n):
        entry = ifd + 2 + 12 * i
        kind = struct.unpack_from("<H", data, entry + 2)[0]
        fields.append((entry + 4, 4, "<"))  # count
        fields.append((entry + 8, 2 if kind == 3 else 4, "<"))  # value (SHORT or LONG)
    return fields


def _gif_fields(data: bytes) -> list[tuple[int, int, str]]:
    """Logical screen size, flags, and the first image descriptor's position and size."""
    fields = [(6, 2, "<"), (8, 2, "<"), (10, 1, "<")]
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while data[pos] == 0x21:  # skip extensions to the image descriptor
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C
    fields += [(pos + 1 + 2 * i, 2, "<") for i in range(4)] + [(pos + 9, 1, "<")]
    fields.append(
        (pos + 10 + (3 * 2 ** ((data[pos + 9] & 7) + 1) if data[pos + 9] & 0x80 else 0), 1, "<")
    )
    return fields


def _bmp_fields() -> list[tuple[int, int, str]]:
    # file size, pixel offset, header size, width, height, planes, bpp, compression, image size,
    # colours used
    return [(2, 4, "<"), (10, 4, "<"), (14, 4, "<"), (18, 4, "<"), (22, 4, "<"), (26, 2, "<"),
            (28, 2, "<"), (30, 4, "<"), (34, 4, "<"), (46, 4, "<")]  # fmt: skip


def _ascii_fields(header: bytes) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end() - m.start(), "ascii") for m in re.finditer(rb"\d+", header)]


def _dicom_bytes(rows: int = 6, cols: int = 8) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2000, 3000
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    pixels = (np.arange(rows * cols, dtype=np.uint16) * 97 % 4096).reshape(rows, cols)
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom_fields(data: bytes) -> list[tuple[int, int, str]]:
    """Value fields of the image attributes (explicit VR little endian: tag, VR, 2-byte length)."""
    fields = []
    for group, elem in [(0x28, 0x02), (0x28, 0x10), (0x28, 0x11), (0x28, 0x100), (0x28, 0x101),
                        (0x28, 0x102), (0x28, 0x103)]:  # fmt: skip
        pos = data.find(struct.pack("<HH", group, elem) + b"US\x02\x00")
        assert pos > 0, (group, elem)
        fields.append((pos + 8, 2, "<"))
    pos = data.find(struct.pack("<HH", 0x7FE0, 0x10))
    fields.append((pos + 8, 4, "<"))  # PixelData length (OW: 2 reserved bytes, 4-byte length)
    for group, elem in [(0x2, 0x0), (0x28, 0x1050), (0x28, 0x1051), (0x28, 0x1053)]:
        pos = data.find(struct.pack("<HH", group, elem))
        if pos >= 0:
            fields.append((pos + 6, 2, "<"))  # element length
    return fields


def _npy_bytes(array: np.ndarray) -> tuple[bytes, list[tuple[int, int, str]]]:
    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getvalue()
    header_end = data.index(b"\n") + 1
    return data, [(8, 2, "<"), *_ascii_fields(data[10:header_end])]


def _make_seeds() -> dict[str, Seed]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    seeds: dict[str, Seed] = {}

    for name, array in [("tiff8", grey), ("tiff8_rgb", rgb), ("tiff16", grey16)]:
        buf = io.BytesIO()
        tifffile.imwrite(buf, array)
        seeds[name] = Seed(".tif", buf.getvalue(), _tiff_fields(buf.getvalue()))
    # LZW (as DRIVE ships it): tifffile needs imagecodecs for it, so Pillow's fallback decodes.
    lzw = _pil_bytes(Image.fromarray(rgb), "TIFF", compression="tiff_lzw")
    seeds["tiff_lzw_pil"] = Seed(".tif", lzw, _tiff_fields(lzw))

    mask = (grey > 128).astype(np.uint8)
    im = Image.fromarray(mask, mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255])
    gif = _pil_bytes(im, "GIF")
    seeds["gif_mask"] = Seed(".gif", gif, _gif_fields(gif))
    gif = _pil_bytes(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    seeds["gif_colour"] = Seed(".gif", gif, _gif_fields(gif))

    ppm = _pil_bytes(Image.fromarray(rgb), "PPM")
    seeds["ppm"] = Seed(".ppm", ppm, _ascii_fields(ppm[:15]))
    pgm = _pil_bytes(Image.fromarray(grey), "PPM")
    seeds["pgm"] = Seed(".pgm", pgm, _ascii_fields(pgm[:15]))
    pgm16 = b"P5\n10 12\n4095\n" + (grey16 % 4096).astype(">u2").tobytes()
    seeds["pgm16"] = Seed(".pgm", pgm16, _ascii_fields(pgm16[:14]))
    seeds["ppm_gz"] = Seed(".ppm.gz", ppm, _ascii_fields(ppm[:15]), gz=True)
    seeds["pgm16_gz"] = Seed(".pgm.gz", pgm16, _ascii_fields(pgm16[:14]), gz=True)

    dcm = _dicom_bytes()
    seeds["dicom"] = Seed(".dcm", dcm, _dicom_fields(dcm))

    jsrt = (rng.integers(0, 4096, JSRT_SIZE * JSRT_SIZE).astype(">u2")).tobytes()
    # No header: the "fields" are pixel words (12-bit values in 16-bit big-endian words).
    words = [(2 * i, 2, ">") for i in (0, 1, JSRT_SIZE, JSRT_SIZE * JSRT_SIZE // 2)]
    seeds["jsrt_img"] = Seed(".IMG", jsrt, words)

    for name, array in [("npy_rgb", rgb), ("npy_f32", grey.astype(np.float32) / 100),
                        ("npy_u16", grey16)]:  # fmt: skip
        data, fields = _npy_bytes(array)
        seeds[name] = Seed(".npy", data, fields)

    bmp = _pil_bytes(Image.fromarray(rgb), "BMP")
    seeds["bmp"] = Seed(".bmp", bmp, _bmp_fields())
    bmp = _pil_bytes(Image.fromarray(grey).convert("P"), "BMP")
    seeds["bmp_palette"] = Seed(".bmp", bmp, _bmp_fields())
    return seeds


SEEDS = _make_seeds()

# ----------------------------------------------------------------------------- mutations

FIELD_VALUES = [0, 1, 2, 3, 7, 8, 12, 16, 32, 255, 256, 4095, 4096, 60000, 65535, 2**31 - 1,
                2**32 - 1]  # fmt: skip

edit = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("set"), st.floats(0, 1), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("duplicate"), st.floats(0, 1), st.integers(1, 256)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 256)),
)
field_edit = st.tuples(
    st.integers(0, 1000), st.sampled_from(FIELD_VALUES) | st.integers(0, 2**32 - 1)
)


def _apply(data: bytes, edits: list[tuple[str, float, object]]) -> bytes:
    out = bytearray(data)
    for op, where, arg in edits:
        if not out and op != "insert":
            continue
        pos = min(int(where * len(out)), max(len(out) - 1, 0))
        if op == "flip":
            out[pos] ^= 1 << int(arg)  # type: ignore[call-overload]
        elif op == "set":
            out[pos] = int(arg)  # type: ignore[call-overload]
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = arg  # type: ignore[index]
        elif op == "duplicate":
            out[pos:pos] = out[pos : pos + int(arg)]  # type: ignore[call-overload]
        elif op == "delete":
            del out[pos : pos + int(arg)]  # type: ignore[call-overload]
    return bytes(out)


def _corrupt_fields(seed: Seed, data: bytes, edits: list[tuple[int, int]]) -> bytes:
    """Set header fields to other values; ASCII fields are applied last-first (lengths change)."""
    out = bytearray(data)
    chosen = sorted(
        ((seed.fields[i % len(seed.fields)], value) for i, value in edits), reverse=True
    )
    for (offset, length, encoding), value in chosen:
        if offset + length > len(out):
            continue
        if encoding == "ascii":
            out[offset : offset + length] = str(value).encode()
        else:
            masked = value & ((1 << (8 * length)) - 1)
            out[offset : offset + length] = masked.to_bytes(
                length, "little" if encoding == "<" else "big"
            )
    return bytes(out)


# ----------------------------------------------------------------------------- checks


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(lio.MAX_PIXELS_ENV, raising=False)
    set_max_pixels(None)
    # tifffile logs every damaged tag it meets; thousands of log records only cost time here.
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
    set_max_pixels(None)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    total = sum(sum(c.values()) for c in TRIED.values())
    summary = {name: dict(c) for name, c in sorted(TRIED.items())}
    print(f"\nfuzzed inputs: {total} ({json.dumps(summary)})")
    if REPORT:
        Path(REPORT).write_text(json.dumps({"total": total, "per_format": summary}, indent=1))


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _timed(fn, *args, trace: bool = False, **kwargs):  # type: ignore[no-untyped-def]
    """Run ``fn``: (result or exception, CPU seconds, traced peak bytes, peak RSS growth).

    The traced peak is 0 unless ``trace``: tracemalloc distorts the time too much to measure
    both in one call.
    """
    rss = _peak_rss()
    if trace:
        tracemalloc.start()
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        result: object = fn(*args, **kwargs)
    except Exception as exc:  # checked by the caller
        result = exc
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert wall < (TRACED_READ_SECONDS if trace else READ_WALL_SECONDS), (
        f"{getattr(fn, '__name__', fn)} took {wall:.2f} s"
    )
    return result, cpu, peak, _peak_rss() - rss


def check_read(path: Path, **kwargs: object) -> str:
    """Read ``path`` as image (timed) and as mask (under tracemalloc); assert the fuzz
    property; return the image outcome."""
    image, seconds, _, rss = _timed(read_image, path, **kwargs)
    assert seconds < READ_SECONDS, f"read_image took {seconds:.2f} s of CPU"
    assert rss < READ_RSS_BYTES, f"read_image grew the peak RSS by {rss:,} bytes"
    if isinstance(image, BaseException):
        if not isinstance(image, ImageReadError):
            raise image
        assert str(path) in str(image) and image.path == path and image.reason
        outcome = "ImageReadError"
    else:
        img, meta = image  # type: ignore[misc]
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] in (1, 3)
        assert img.flags.c_contiguous
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        assert img.shape[:2] == (meta.height, meta.width)
        outcome = "decoded"
    mask, seconds, peak, rss = _timed(read_mask, path, trace=True, **kwargs)
    assert seconds < TRACED_READ_SECONDS, f"read_mask took {seconds:.2f} s of CPU, traced"
    assert peak < READ_PEAK_BYTES, f"read_mask allocated {peak:,} bytes"
    assert rss < READ_RSS_BYTES, f"read_mask grew the peak RSS by {rss:,} bytes"
    if isinstance(mask, BaseException):
        if not isinstance(mask, ImageReadError):
            raise mask
        assert str(path) in str(mask)
        assert isinstance(image, ImageReadError), f"read_image decoded, read_mask: {mask}"
    else:
        assert mask.dtype == bool and mask.ndim == 2  # type: ignore[union-attr]
        if not isinstance(image, BaseException):
            assert mask.shape == image[0].shape[:2]  # type: ignore[index]
    return outcome


# ----------------------------------------------------------------------------- tests


def test_seeds_are_valid(tmp_path: Path) -> None:
    for name, seed in SEEDS.items():
        path = tmp_path / f"{name}{seed.suffix}"
        path.write_bytes(gzip.compress(seed.data) if seed.gz else seed.data)
        assert check_read(path) == "decoded", name


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_mutated_files_decode_or_fail_cleanly(tmp_path: Path, name: str) -> None:
    seed = SEEDS[name]
    examples = max(EXAMPLES // 8, 3) if name == "jsrt_img" else EXAMPLES

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # The same inputs every CI run; new ones when a budget is asked for.
        derandomize="LOCALDISC_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        fields=st.lists(field_edit, max_size=2),
        edits=st.lists(edit, max_size=4),
        outer=st.lists(edit, max_size=2) if seed.gz else st.just([]),
    )
    def run(
        fields: list[tuple[int, int]],
        edits: list[tuple[str, float, object]],
        outer: list[tuple[str, float, object]],
    ) -> None:
        data = _apply(_corrupt_fields(seed, seed.data, fields), edits)
        if seed.gz:
            data = _apply(gzip.compress(data, mtime=0), outer)
        path = tmp_path / f"fuzz {name}{seed.suffix}"
        path.write_bytes(data)
        # JSRT images are 2048 x 2048 by definition: they need the default limit.
        limit = None if name == "jsrt_img" else FUZZ_MAX_PIXELS
        outcome = "failed"
        try:
            outcome = check_read(path, max_pixels=limit)
        finally:
            TRIED.setdefault(name, Counter())[outcome] += 1

    run()


# ----------------------------------------------------------------------------- huge claims

#: Allocation bounds for reads of tiny files that claim huge images.
CLAIM_PEAK_BYTES = 16 << 20
CLAIM_RSS_BYTES = 64 << 20


def _claim_size(name: str, n: int) -> tuple[str, bytes]:
    """Seed ``name`` with its header claiming an ``n`` x ``n`` image (pixel data unchanged)."""
    seed = SEEDS[name]
    data = bytearray(seed.data)
    if seed.suffix == ".tif":
        ifd = struct.unpack_from("<I", data, 4)[0]
        for i in range(struct.unpack_from("<H", data, ifd)[0]):
            entry = ifd + 2 + 12 * i
            tag, kind = struct.unpack_from("<HH", data, entry)
            if tag in (256, 257):  # ImageWidth, ImageLength
                struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, n)
    elif seed.suffix == ".bmp":
        struct.pack_into("<ii", data, 18, n, n)
    elif seed.suffix == ".gif":
        for index in (0, 1, 5, 6):  # logical screen and image descriptor width, height
            struct.pack_into("<H", data, seed.fields[index][0], n)
    elif seed.suffix == ".dcm":
        for index in (1, 2):  # Rows, Columns
            struct.pack_into("<H", data, seed.fields[index][0], n)
    elif seed.suffix == ".npy":
        data = bytearray(data.replace(b"(12, 10", b"(%d, %d" % (n, n), 1))
    else:  # netpbm: "P6\n10 12\n..."
        data = bytearray(re.sub(rb"^(P\d\s+)\d+\s+\d+", rb"\g<1>%d %d" % (n, n), bytes(data)))
    out = gzip.compress(bytes(data), mtime=0) if seed.gz else bytes(data)
    return seed.suffix, out


CLAIMABLE = sorted(name for name in SEEDS if name != "jsrt_img")  # JSRT's size is fixed


def _read_claim(path: Path) -> ImageReadError:
    result, seconds, peak, rss = _timed(read_image, path, trace=True)
    assert isinstance(result, ImageReadError), result
    assert str(path) in str(result)
    assert seconds < TRACED_READ_SECONDS
    assert peak < CLAIM_PEAK_BYTES, f"{path.name}: allocated {peak:,} bytes"
    assert rss < CLAIM_RSS_BYTES, f"{path.name}: peak RSS grew by {rss:,} bytes"
    return result


@pytest.mark.parametrize("name", CLAIMABLE)
def test_header_claiming_60000x60000_is_refused_before_allocation(
    tmp_path: Path, name: str
) -> None:
    suffix, data = _claim_size(name, 60000)
    path = tmp_path / f"huge {name}{suffix}"
    path.write_bytes(data)
    assert len(data) < 2000
    err = _read_claim(path)
    assert "60000x60000 = 3,600,000,000 pixels, over the limit" in err.reason
    with pytest.raises(ImageReadError, match="over the limit"):
        read_mask(path)


# Uncompressed formats can tell from the file's size that the pixels are not there: a tiny
# file claiming 16000 x 16000 (under the default limit) must not allocate what it claims.
@pytest.mark.parametrize(
    "name", ["tiff8", "tiff16", "tiff8_rgb", "pgm16", "pgm16_gz", "ppm_gz", "dicom", "npy_rgb"]
)
def test_tiny_file_claiming_16000x16000_is_truncated_without_allocating(
    tmp_path: Path, name: str
) -> None:
    suffix, data = _claim_size(name, 16000)
    path = tmp_path / f"claim {name}{suffix}"
    path.write_bytes(data)
    err = _read_claim(path)
    assert "truncated" in err.reason or "less than expected" in err.reason, err.reason


# ----------------------------------------------------------------------------- regressions


def _tiff(entries: list[tuple[int, int, int]], tail: bytes) -> bytes:
    """A little-endian TIFF with one IFD of (tag, type, value) entries, count 1, then ``tail``."""
    body = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        body += struct.pack("<HHI", tag, kind, 1) + struct.pack("<I", value)
    return b"II*\x00" + struct.pack("<I", 8) + body + b"\x00\x00\x00\x00" + tail


def test_regression_dicom_length_field_claiming_a_gigabyte(tmp_path: Path) -> None:
    # Found by the fuzzer: two bytes inserted in a DICOM shifted an element so that its length
    # read 1.2 GB; pydicom's fp.read(length) then allocated 1.2 GB for a 600-byte file.
    uid = b"1.2.840.10008.1.2.1\x00"  # explicit VR little endian
    meta = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(uid)) + uid
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(meta))
    pixel_data = b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", 0x40000000) + bytes(16)
    path = tmp_path / "length bomb.dcm"
    path.write_bytes(bytes(128) + b"DICM" + group_length + meta + pixel_data)
    err = _read_claim(path)
    assert err.path == path


@pytest.mark.parametrize("compression", [1, 5])  # none, LZW (DRIVE's)
def test_regression_tiff_strip_byte_count_beyond_the_file(tmp_path: Path, compression: int) -> None:
    # Found by the fuzzer: a StripByteCounts of 268315440 in a 562-byte TIFF made tifffile
    # allocate 256 MiB before finding the data missing.
    entries = [(256, 3, 4), (257, 3, 4), (258, 3, 8), (259, 3, compression), (262, 3, 1),
               (273, 4, 8 + 2 + 9 * 12 + 4), (277, 3, 1), (278, 3, 4),
               (279, 4, 268315440)]  # fmt: skip
    path = tmp_path / "strip bomb.tif"
    path.write_bytes(_tiff(entries, bytes(16)))
    err = _read_claim(path)
    assert "beyond the end of the file" in err.reason


def test_regression_pillow_bomb_check_at_tiff_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow checks its own limit again when a TIFF loads, so TIFFs that only Pillow decodes
    # (LZW without imagecodecs, as DRIVE ships them) above 178,956,970 pixels were refused
    # whatever max_pixels said. A lowered Pillow limit shows it on a small image.
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    path = tmp_path / "lzw.tif"
    Image.fromarray(rgb).save(path, compression="tiff_lzw")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    img, meta = read_image(path)
    np.testing.assert_array_equal(img, rgb / np.float32(255))
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(ImageReadError, match="over the limit"):
        read_image(path, max_pixels=1000)
