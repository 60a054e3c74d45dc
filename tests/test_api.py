"""The Python API as the README shows it."""

import numpy as np


def test_readme_python_tour(tmp_path):
    from localdisc.data.datasets import load_dataset
    from localdisc.data.io import read_image
    from localdisc.models import LDModel

    LDModel(dim=8, clusters=4).save(tmp_path / "run")
    model = LDModel.from_pretrained(tmp_path / "run")
    sample = load_dataset("synthetic_fundus", "2", split="train")[0]
    from PIL import Image

    Image.fromarray((sample.image * 255).astype(np.uint8)).save(tmp_path / "image.png")
    image, meta = read_image(tmp_path / "image.png")
    assert meta.channels == 3 and image.dtype == np.float32
    assert model.embed(image).shape == (8, *image.shape[:2])
    assert model.cluster(image).shape == (4, *image.shape[:2])
    assert sum(p.numel() for p in model.encoder.parameters()) > 0
    assert "vessels" in sample.masks and sample.fov.dtype == bool


def test_readme_segmenter_tour(tmp_path):
    from localdisc.data.datasets import load_dataset
    from localdisc.eval.metrics import segmentation_metrics
    from localdisc.models.segmenter import Segmenter

    Segmenter(size=32).save(tmp_path / "ft")
    seg = Segmenter.from_pretrained(tmp_path / "ft")
    sample = load_dataset("synthetic_fundus", "2", split="test")[0]
    prob = seg.predict(sample.image)
    assert prob.shape == sample.image.shape[:2]
    scores = segmentation_metrics(prob, sample.masks["vessels"], sample.fov, topology=True)
    assert {"dice", "f1", "auc", "accuracy", "sensitivity", "specificity", "cldice"} <= set(scores)
