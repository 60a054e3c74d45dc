"""Helpers shared by the tests: tiny image fixtures and the optional public data sets."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: The published ImageNet statistics, written out so that tests check the package's values.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: ``../shared/data`` beside the repository (CI lays it out so), absent on a bare machine.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def save(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    """Write ``array`` (uint8) as an image, format from the suffix, creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def shared(name: str) -> Path:
    """A shared data set's folder, or skip the test with the reason when it is absent."""
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"shared data set {path} is not available")
    return path


def tiny_pretrain_config(**overrides: object):
    """A pre-training config that runs in seconds on a CPU (3 + 3 steps at 32 x 32)."""
    from localdisc.engine.pretrain import PretrainConfig

    kw: dict = dict(data=["-"], modality="fundus", stage1_steps=3, stage2_steps=3, batch=1,
                    size=32, pool_size=48, clusters=4, dim=8, checkpoint_every=2, val_every=3,
                    figure_every=100, log_every=1, val_images=2, device="cpu", progress=False,
                    seed=3)  # fmt: skip
    kw.update(overrides)
    return PretrainConfig(**kw)


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch threads (tiny tensors run fastest on one, and do not stall when the
    cores are busy), then restore the previous count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def generator(seed: int):
    """A seeded CPU ``torch.Generator``."""
    import torch

    return torch.Generator().manual_seed(seed)


def sphere_field(h: int, w: int) -> np.ndarray:
    """Colours that are unit vectors varying smoothly and one-to-one with (x / w, y / h): the
    same scene at any size (for coordinate tests with a colour-as-embedding model)."""
    phi = 0.2 + (np.arange(w)[None, :] + 0.5) / w
    theta = 0.3 + (np.arange(h)[:, None] + 0.5) / h
    phi, theta = np.broadcast_arrays(phi, theta)
    xyz = [np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)]
    return np.stack(xyz, -1).astype(np.float32)


def spy_load_model(monkeypatch) -> list[str]:
    """The devices :func:`localdisc.tasks.similarity.load_model` is asked for from now on (each
    load still runs on the CPU: the test machine may have no GPU)."""
    import localdisc.tasks.similarity as module

    devices: list[str] = []
    real = module.load_model

    def spy(run_dir, *, device="cpu"):
        devices.append(device)
        return real(run_dir, device="cpu")

    monkeypatch.setattr(module, "load_model", spy)
    return devices


def own_folder(root: Path, n: int = 6, *, modality: str = "fundus") -> Path:
    """A folder set of one's own: ``n`` 48 x 48 synthetic images in images/ and their masks in
    masks/ (fundus: colour photographs and vessels; xray: grey radiographs and lungs)."""
    from localdisc.data.synthetic import synthetic_fundus, synthetic_xray

    for i in range(n):
        if modality == "fundus":
            s = synthetic_fundus(48, seed=i)
            image, mask = s.image, s.vessels
        else:
            x = synthetic_xray(48, seed=i)
            image, mask = x.image[..., 0], x.lungs
        save(root / "images" / f"case{i}.png", (image * 255).astype(np.uint8))
        save(root / "masks" / f"case{i}.png", (mask * 255).astype(np.uint8))
    return root


def signal_at_step(monkeypatch, engine, step: int, signals: list[int]) -> list[int]:
    """Send ``signals`` to this process in training step ``step`` (counted from 1, over the
    phases of a fine-tuning) of the loop in module ``engine`` (engine.finetune or
    engine.pseudo_label: each step augments its batch once), before its forward pass; returns
    the steps taken, growing as they run."""
    import os

    real, taken = engine.augment, []

    def augment(*args, **kwargs):
        taken.append(len(taken) + 1)
        if taken[-1] == step:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "augment", augment)
    return taken


def signal_in_checkpoint_writes(monkeypatch, signals: list[int], nth: int = 1) -> list[str]:
    """Send ``signals`` to this process as the ``nth`` checkpoint starts being written (its
    first file); returns the files written."""
    import os

    import localdisc.engine.checkpoint as checkpoint

    real, written = checkpoint._write_file, []

    def write_file(path, data):
        written.append(path.name)
        if path.name == "model.safetensors" and written.count(path.name) == nth:
            for signum in signals:
                os.kill(os.getpid(), signum)
        real(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", write_file)
    return written


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` with its longer side ``size``, each side rounded on its own (as the model's
    working images are made: :func:`~localdisc.tasks.similarity.resized_shape`)."""
    from localdisc.data.preprocess import resize_image
    from localdisc.tasks.similarity import resized_shape

    shape, scale = resized_shape(image.shape, size)
    return image if scale == (1.0, 1.0) else resize_image(image, shape)


def run_two_ranks(tmp_path, source: str, *args: str) -> list[tuple[str, str]]:
    """Run ``source`` as ranks 0 and 1 of a gloo group (argv: rank, store, run folder,
    ``args``), as torchrun would; their (stdout, stderr)."""
    script = tmp_path / "rank.py"
    script.write_text(source)
    tests = str(Path(__file__).resolve().parent)  # helpers
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(rank),
                str(tmp_path / "store"),
                str(tmp_path / "run"),
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    try:
        return [rank.communicate(timeout=120) for rank in ranks]
    finally:
        for rank in ranks:
            if rank.poll() is None:  # a rank that waits for the other in vain
                rank.kill()


def squares(n: int, size: int = 32, seed: int = 0):
    """``n`` bright squares on a dark noisy background (N x 3 x size x size) and their masks
    (N x 1 x size x size): an easy segmentation problem for the fine-tuning tests."""
    import torch

    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, size, size)
    for i in range(n):
        y, x = torch.randint(0, size - 12, (2,), generator=g).tolist()
        masks[i, :, y : y + 12, x : x + 12] = 1
    images = (0.2 + 0.6 * masks + 0.05 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1)
    return images.repeat(1, 3, 1, 1), masks
