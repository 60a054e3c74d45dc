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


def test_readme_similarity_and_localizer_tour(tmp_path):
    import localdisc
    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.models import LDModel

    LDModel(dim=8, clusters=4).save(tmp_path / "run")
    image, other = synthetic_fundus(64, seed=1), synthetic_fundus(64, seed=2)
    maps = localdisc.similarity(tmp_path / "run", image.image, [(20, 30)], [other.image])
    assert maps.query.shape == (1, 64, 64) and len(maps.best[0]) == 1
    find = localdisc.Localizer(tmp_path / "run", image.image, {"disc": image.optic_disc})
    found = find(other.image)["disc"]
    assert 0 <= found.x < 64 and 0 <= found.y < 64 and -1 <= found.confidence <= 1
