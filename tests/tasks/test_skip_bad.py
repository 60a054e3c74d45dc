"""``--skip-bad`` (:class:`~localdisc.tasks.predict.SkippedImages`): an image's own read error
is skipped, one of the installation (pydicom or a DICOM decoder missing) is not."""

import sys

import numpy as np
import pytest

from helpers import save
from localdisc.data.io import read_image
from localdisc.errors import ImageReadError, ReaderSetupError
from localdisc.models.segmenter import Segmenter
from localdisc.tasks.predict import SKIP_BAD_HINT, SkippedImages, predict_images


def _truncated_png(path):
    noise = np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)
    save(path, noise)
    path.write_bytes(path.read_bytes()[:100])
    return path


def _dicom(path):
    """A plain (uncompressed) 4 x 4 DICOM image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((4, 4), 300, "<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_skipped_images_raise_errors_of_the_installation(tmp_path):
    """Skipping 'pydicom is not installed' or 'no decoder for JPEG Lossless' dropped every
    DICOM of a cohort without stopping: they are raised, without the --skip-bad hint."""
    setup = ReaderSetupError(tmp_path / "a.dcm", "reading DICOM needs pydicom: pip install x")
    skips = SkippedImages(True, log=lambda m: None, count=3)
    with pytest.raises(ReaderSetupError) as error:
        skips.unreadable("a", tmp_path / "a.dcm", setup)
    assert error.value is setup and skips.skipped == []
    assert SkippedImages(count=3).hinted(tmp_path / "a.dcm", setup) is setup
    # The file's own error is still skipped, or hinted at.
    broken = _truncated_png(tmp_path / "b.png")
    assert skips.read("b", broken) is None and skips.names == {"b"}
    with pytest.raises(ImageReadError, match=f"; {SKIP_BAD_HINT}$"):
        SkippedImages(count=3).read("b", broken)


def test_predict_skip_bad_stops_at_a_missing_pydicom(tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    Segmenter(modality="fundus", size=32, width=4, depth=2).save(tmp_path / "model")
    images = tmp_path / "in"
    save(images / "a.png", np.full((20, 24, 3), 120, np.uint8))
    _truncated_png(images / "b.png")
    _dicom(images / "c.dcm")
    args = dict(device="cpu", skip_bad=True, log=lambda m: None)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` fail
        with pytest.raises(ReaderSetupError) as error:
            predict_images(tmp_path / "model", [images], tmp_path / "out", **args)
    assert str(error.value) == (
        f"{images / 'c.dcm'}: reading DICOM needs pydicom 3 or newer: pip install -U pydicom "
        "python-gdcm (localdisc's [dicom] extra)"
    )
    written = predict_images(tmp_path / "model", [images], tmp_path / "out", **args)
    assert [p.name for p in written] == ["a_mask.png", "c_mask.png"]  # b.png skipped


def test_read_replacing_removes_a_skipped_images_earlier_outputs(tmp_path):
    out = tmp_path / "out"
    for name in ("a", "b"):
        for suffix in ("_prob", "_mask"):
            save(out / f"{name}{suffix}.png", np.zeros((2, 2), np.uint8))
    good = save(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    files = [("a", good), ("b", _truncated_png(tmp_path / "b.png"))]
    skips = SkippedImages(True, log=lambda m: None)
    image, meta = skips.read_replacing("a", good, out, files, read_image)
    assert image.shape == (4, 4, 3) and meta.width == 4
    assert skips.read_replacing("b", files[1][1], out, files, read_image) is None
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "a_prob.png"]
    with pytest.raises(ImageReadError, match=SKIP_BAD_HINT):  # not enabled: raised, kept
        SkippedImages(count=2).read_replacing("b", files[1][1], out, files, read_image)
