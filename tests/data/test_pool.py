"""The pre-training pool: generated pools, ``max_images`` and the order of the images."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from localdisc.data.pool import resolve_pool, synthetic_pool
from localdisc.errors import DatasetError


@pytest.mark.parametrize("spec", ["synthetic_fundus:0", "synthetic_fundus:00"])
def test_an_empty_generated_pool_is_a_clear_error(spec: str) -> None:
    with pytest.raises(DatasetError, match=f"{spec}: a generated pool needs N >= 1 images, not 0"):
        resolve_pool([spec], "fundus", 48, log=lambda m: None)


def test_synthetic_pool_of_no_images_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="synthetic_xray: a generated pool needs n >= 1"):
        synthetic_pool(0, "xray", 48)


def test_a_generated_pool_of_one_image_is_fine() -> None:
    pool, skipped = resolve_pool(["synthetic_fundus:1"], "fundus", 48, log=lambda m: None)
    assert tuple(pool.shape) == (1, 3, 48, 48) and skipped == []


def _grey_folder(root: Path, values: dict[str, int]) -> Path:
    """A folder of 12 x 12 grey PNGs, each of one value, named as given."""
    root.mkdir()
    for name, value in values.items():
        Image.fromarray(np.full((12, 12), value, np.uint8)).save(root / name)
    return root


def test_max_images_counts_generated_images_too() -> None:
    pool, _ = resolve_pool(["synthetic_xray:5"], "xray", 16, max_images=2, log=lambda m: None)
    assert torch.equal(pool, synthetic_pool(2, "xray", 16))
    pool, _ = resolve_pool(
        ["synthetic_xray:1", "synthetic_xray:1"], "xray", 16, max_images=1, log=lambda m: None
    )
    assert pool.shape[0] == 1


def test_max_images_keeps_the_first_images_in_the_order_of_the_specs(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"b.png": 200, "a.png": 100, "c.png": 50})
    specs = [str(folder), "synthetic_xray:2"]
    pool, _ = resolve_pool(specs, "xray", 8, max_images=4, log=lambda m: None)
    assert pool.shape[0] == 4
    assert [int(pool[i].float().mean()) for i in range(3)] == [100, 200, 50]  # by file name
    assert torch.equal(pool[3], synthetic_pool(1, "xray", 8)[0])
    pool, _ = resolve_pool(specs, "xray", 8, max_images=2, log=lambda m: None)
    assert [int(pool[i].float().mean()) for i in range(pool.shape[0])] == [100, 200]


def test_skipped_files_keep_the_order_of_the_others(tmp_path: Path) -> None:
    folder = _grey_folder(tmp_path / "pool", {"a.png": 10, "c.png": 30})
    (folder / "b.png").write_bytes(b"not a png")
    pool, skipped = resolve_pool(
        [str(folder), "synthetic_xray:1"], "xray", 8, skip_bad=True, log=lambda m: None
    )
    assert pool.shape[0] == 3 and [int(pool[i].float().mean()) for i in (0, 1)] == [10, 30]
    assert torch.equal(pool[2], synthetic_pool(1, "xray", 8)[0])
    assert [p.name for p, _ in skipped] == ["b.png"]


def test_a_negative_seed_for_generated_images_is_a_clear_error() -> None:
    with pytest.raises(DatasetError, match="synthetic_fundus: generated images need a seed >= 0"):
        resolve_pool(["synthetic_fundus:1"], "fundus", 16, seed=-1, log=lambda m: None)
