"""The pre-training pool: generated pools must hold at least one image."""

import pytest

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
