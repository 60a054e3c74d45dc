"""The Python API as the README shows it: its code blocks run, its names import."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import save, torch_threads


def test_ld_model_and_data_tour(tmp_path):
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


def test_segmenter_and_metrics_tour(tmp_path):
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


def test_similarity_and_localizer_tour(tmp_path):
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


# --- README's Python code, executed as written ------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    """The ```python blocks of README.md, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


def drive_like(root: Path) -> None:
    """DRIVE's official layout with generated photographs of DRIVE's size (565 x 584)."""
    from localdisc.data.synthetic import synthetic_fundus

    for folder, kind, ids in (("training", "training", "21 22"), ("test", "test", "01 02")):
        for seed, ident in enumerate(ids.split()):
            eye = synthetic_fundus(96, seed=seed)
            photo = Image.fromarray((eye.image * 255).astype(np.uint8)).resize((565, 584))
            base = root / folder
            save(base / "images" / f"{ident}_{kind}.tif", np.asarray(photo))
            for sub, name, mask in (("1st_manual", f"{ident}_manual1", eye.vessels),
                                    ("mask", f"{ident}_{kind}_mask", eye.fov)):  # fmt: skip
                big = Image.fromarray(mask.astype(np.uint8) * 255).resize((565, 584), Image.NEAREST)
                save(base / sub / f"{name}.gif", np.asarray(big))


def readme_workspace(root: Path) -> None:
    """What README's first block assumes: LD runs, a fine-tuned model, DRIVE and photographs,
    all tiny."""
    from dataclasses import asdict

    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.engine.pretrain import PretrainConfig
    from localdisc.models import LDModel, Segmenter

    drive_like(root / "DRIVE")
    tiny = dict(depth=2, width=8, dim=8, clusters=4)
    LDModel(**tiny).save(root / "runs" / "ld")
    (root / "runs" / "ld" / "stage1.safetensors").write_bytes(
        (root / "runs" / "ld" / "model.safetensors").read_bytes()
    )
    LDModel(**tiny).save(root / "runs" / "ld-cs")
    settings = asdict(PretrainConfig(size=64, center_sigma=0.25, **tiny))  # --center-sensitive
    config = json.loads((root / "runs" / "ld-cs" / "config.json").read_text())
    config["pretrain"] = settings
    (root / "runs" / "ld-cs" / "config.json").write_text(json.dumps(config))
    Segmenter(size=32, depth=2, width=8).save(root / "ft" / "drive-ld")
    for seed in range(2):
        photo = (synthetic_fundus(96, seed=seed).image * 255).astype(np.uint8)
        save(root / "photos" / f"eye{seed}.png", photo)


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    """Every README Python block runs on its own, in a fresh namespace, as a reader pastes it
    (the first on tiny stand-ins for the runs and data it names)."""
    import functools

    import localdisc.tasks.vessels
    from localdisc.tasks.self_training import StudentConfig

    blocks = readme_python_blocks()
    assert len(blocks) >= 2, "README's Python section lost its code"
    readme_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    # `shape-guided vessels` at its published settings takes minutes: a student of seconds.
    quick = functools.partial(StudentConfig, steps=2, size=64, crop=64, depth=2, width=4, batch=1)
    monkeypatch.setattr(localdisc.tasks.vessels, "StudentConfig", quick)
    with torch_threads(1):
        for i, code in enumerate(blocks):
            namespace: dict = {"__name__": f"readme_block_{i}"}
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "vessels" / "eye0_mask.png").is_file()
    assert (tmp_path / "ft" / "tiny" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "tiny-sg" / "model.safetensors").is_file()


# --- the package's namespaces -------------------------------------------------------------------


def test_top_level_names_resolve_and_complete():
    import importlib

    import localdisc

    assert {"LDModel", "Segmenter", "pretrain", "load_dataset", "similarity"} <= set(
        localdisc.__all__
    )
    for name in localdisc.__all__:
        value = getattr(localdisc, name)
        module = importlib.import_module(value.__module__)
        assert value is getattr(module, name), name
        assert name in dir(localdisc), name  # tab completion in a notebook
    # `localdisc.pretrain` is the function, not the module of the same name
    assert callable(localdisc.pretrain) and callable(localdisc.similarity)
    with pytest.raises(AttributeError, match="LDmodel"):
        localdisc.LDmodel  # noqa: B018


@pytest.mark.parametrize(
    "code, heavy",
    [
        ("import localdisc; dir(localdisc); localdisc.__all__", ("torch", "numpy", "scipy")),
        ("import localdisc.cli", ("torch", "matplotlib", "monai")),  # `localdisc --help` is fast
    ],
)
def test_imports_stay_light(code, heavy):
    check = f"import sys; {code}; heavy = [m for m in {heavy!r} if m in sys.modules]; " + (
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_subpackages_export_their_main_names():
    import localdisc.data
    import localdisc.eval
    import localdisc.models
    from localdisc.data import io, read_image  # a submodule and a name, side by side
    from localdisc.eval import metrics
    from localdisc.models.segmenter import Segmenter

    assert read_image is io.read_image and localdisc.data.load_dataset.__module__.endswith(
        "datasets"
    )
    for package in (localdisc.data, localdisc.eval, localdisc.models):
        for name in package.__all__:
            assert getattr(package, name) is not None and name in dir(package), name
    assert localdisc.eval.segmentation_metrics is metrics.segmentation_metrics
    assert localdisc.models.Segmenter is Segmenter
    with pytest.raises(AttributeError):
        localdisc.data.no_such_name  # noqa: B018
