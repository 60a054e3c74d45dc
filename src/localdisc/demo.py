"""``localdisc demo``: pre-train LD on a laptop CPU and show what it learnt.

With no data set present it trains on generated fundus images plus the real fundus photograph
that scikit-image ships (``skimage.data.retina()``, offline once scikit-image is installed), and
writes the figures a person wants: cluster maps, and for a vessel, the optic disc and background
the similarity of that pixel to every pixel of the photograph and of other images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from localdisc.data.pool import pool_files, prepare_pool_image
from localdisc.data.preprocess import resize_image, roi_crop
from localdisc.engine.pretrain import (
    PretrainConfig,
    PretrainResult,
    pretrain,
    refuse_foreign_files,
    refuse_other_files,
    refuse_used_run_dir,
    settings_differences,
)
from localdisc.errors import CheckpointError
from localdisc.eval.figures import Query, cluster_figure, similarity_figure

if TYPE_CHECKING:
    from localdisc.models.ld import LDModel

# The photograph is repeated so that it makes up a quarter of the pool (8 of 32 images): the
# augmentation makes every draw a different view of it.
RETINA_COPIES = 8


@dataclass(frozen=True)
class DemoPreset:
    synthetic: int
    size: int
    batch: int
    stage1_steps: int
    stage2_steps: int
    shape_steps: int  # stage 2 with the simulated vessel prior (shape-guided segmentation)
    student_steps: int  # the network taught by a filter and painted trees (shape-guided vessels)
    # A smaller network than the paper's, sized to what a 2-core CPU can learn in minutes: with
    # two VGG blocks a pixel sees a window about 20 px wide, too little to read its position off
    # the border or to tell patches apart by their surroundings, so patch discrimination has to use
    # the local tissue, such as the vessels. Pool images of 256 px, cropped to 1/2-1 of their
    # area and trained at 128 px, show the vessels at several scales; figures are at 256 px.
    # benchmarks/RESULTS.md ("Which network the demo trains") has the variants measured.
    depth: int = 2
    width: int = 8
    clusters: int = 16
    pool_size: int | None = None  # None: the engine's default, size * 8/7
    crop_scale: tuple[float, float] = (0.9, 1.0)


FULL = DemoPreset(synthetic=24, size=128, batch=1, stage1_steps=500, stage2_steps=500,
                  shape_steps=500, student_steps=600, pool_size=256,
                  crop_scale=(0.5, 1.0))  # fmt: skip
QUICK = DemoPreset(synthetic=4, size=64, batch=1, stage1_steps=4, stage2_steps=4, shape_steps=2,
                   student_steps=2)  # fmt: skip


def retina_photograph(size: int) -> np.ndarray:
    """scikit-image's fundus photograph, ROI-cropped and resized, H x W x 3 in [0, 1]."""
    import skimage.data

    image = skimage.data.retina().astype(np.float32) / 255.0
    return resize_image(roi_crop(image)[0], (size, size))


def demo_pool_specs(modality: str, synthetic: int) -> list[str]:
    """The demo's pre-training pool: generated images, plus copies of the retina photograph."""
    specs = [f"synthetic_{modality}:{synthetic}"]
    return specs + ["skimage:retina"] * RETINA_COPIES if modality == "fundus" else specs


def demo_figure_images(modality: str, size: int, seed: int = 0) -> list[np.ndarray]:
    """The photograph (fundus) and generated images not in the pool, H x W x C in [0, 1]."""
    from localdisc.data import synthetic

    if modality == "fundus":
        others = [synthetic.synthetic_fundus(size, 10_000 + seed + i).image for i in range(2)]
        return [retina_photograph(size), *others]
    return [synthetic.synthetic_xray(size, 10_000 + seed + i).image for i in range(3)]


def demo_figure_names(modality: str) -> list[str]:
    """The titles of :func:`demo_figure_images`' images, in their order."""
    if modality == "fundus":
        return ["retina photograph (scikit-image)", "generated eye 1", "generated eye 2"]
    return [f"generated X-ray {i + 1}" for i in range(3)]


def anatomy_scores(model: LDModel, size: int, seed: int = 0, count: int = 4) -> dict[str, float]:
    """How well single clusters follow anatomy on ``count`` generated eyes not in the pool.

    For the vessels, the optic disc and the dark surround of the field of view: the mean Dice of
    the one cluster that covers that structure best on all the eyes (``best_cluster_dice``). A
    position code scores near zero on discs, which move from eye to eye, and near the reference
    ``"vessels if all field of view"`` (one cluster over the whole field of view) on vessels.
    """
    from localdisc.data import synthetic
    from localdisc.eval.metrics import best_cluster_dice, dice_score

    eyes = [synthetic.synthetic_fundus(size, 40_000 + seed + i) for i in range(count)]
    maps = [model.cluster(eye.image).argmax(0).cpu().numpy() for eye in eyes]
    regions = {
        "vessels": [eye.vessels for eye in eyes],
        "optic disc": [eye.disc for eye in eyes],
        "surround": [~eye.fov for eye in eyes],
    }
    scores = {name: best_cluster_dice(maps, masks)[1] for name, masks in regions.items()}
    everywhere = [dice_score(eye.fov.astype(np.float32), eye.vessels) for eye in eyes]
    scores["vessels if all field of view"] = float(np.mean(everywhere))
    return scores


def demo_queries(image: np.ndarray) -> list[Query]:
    """A vessel pixel, the optic disc centre and a background pixel of a fundus photograph.

    Found without labels: the disc is the brightest blob, the vessel is the strongest Frangi
    (tubularity) response away from the disc, the background the flattest field pixel.
    """
    from skimage.filters import frangi

    from localdisc.data.preprocess import fov_from_image

    h, w = image.shape[:2]
    fov = ndimage.binary_erosion(fov_from_image(image), iterations=max(2, h // 20))
    lum = ndimage.gaussian_filter(image.mean(-1), sigma=h / 40)
    dy, dx = np.unravel_index(np.argmax(np.where(fov, lum, -np.inf)), lum.shape)
    yy, xx = np.mgrid[:h, :w]
    far = np.hypot(yy - dy, xx - dx) > h / 6
    vesselness = frangi(image[..., 1], sigmas=(1, 2, 3), black_ridges=True)
    vy, vx = np.unravel_index(np.argmax(np.where(fov & far, vesselness, -np.inf)), lum.shape)
    smooth = ndimage.gaussian_filter(vesselness, sigma=3)
    by, bx = np.unravel_index(np.argmin(np.where(fov & far, smooth, np.inf)), lum.shape)
    return [
        (0, int(vy), int(vx), "vessel"),
        (0, int(dy), int(dx), "optic disc"),
        (0, int(by), int(bx), "background"),
    ]


def _own_run(run_dir: Path, config: PretrainConfig) -> bool:
    """Whether ``run_dir`` holds this demo's run already: then it continues (or, finished, is
    reused) as with ``--resume``. A folder holding another run is refused, nothing deleted."""
    differences = settings_differences(run_dir, config)
    if differences == []:
        refuse_other_files(run_dir, config)  # --data grown since: not reused as its run
        return True
    refuse_foreign_files(run_dir)  # a user's own config.json or log.csv: in its own words
    try:
        refuse_used_run_dir(run_dir)
    except CheckpointError as exc:
        if run_dir.exists() and not run_dir.is_dir():  # its own words: a file, not a folder
            raise
        named = f" ({', '.join(differences)})" if differences else ""
        raise CheckpointError(
            f"{run_dir}: holds a run with other settings than this demo's{named}; choose another "
            "--out (nothing was deleted)"
        ) from exc
    return False


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    data: list[str] | None = None,
    modality: str = "fundus",
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Pre-train a small LD model and write its figures; returns the paths written."""
    preset = QUICK if quick else FULL
    out = Path(out)
    config = PretrainConfig(
        data=list(data) if data else demo_pool_specs(modality, preset.synthetic),
        modality=modality,
        stage1_steps=preset.stage1_steps,
        stage2_steps=preset.stage2_steps,
        batch=preset.batch,
        size=preset.size,
        depth=preset.depth,
        width=preset.width,
        clusters=preset.clusters,
        pool_size=preset.pool_size,
        crop_scale=preset.crop_scale,
        val_images=0 if quick else 2,
        val_every=10**9,
        checkpoint_every=100,
        figure_every=10**9,
        device=device,
        seed=seed,
        progress=progress,
    )
    resume = _own_run(out, config)
    # Figures at the pool's scale: the network has only seen structures of that size.
    size = config.resolved_pool_size
    # The files of --data that the figures show, listed before the training (they were looked
    # for after it). Generated images and the scikit-image photograph have no files: without
    # files, the figures show the built-in demo's images.
    paths = pool_files(data, modality)[:3] if data else []
    t0 = time.perf_counter()
    result: PretrainResult = pretrain(config, out, resume=resume, log=log)
    # Over all the run's starts where known: a resumed demo said the run's steps in this
    # call's seconds ("8 steps in 16 s" for 2 trained here).
    elapsed = result.elapsed if result.elapsed is not None else time.perf_counter() - t0
    if result.already_finished:
        log(f"reusing the demo's finished pre-training in {out} ({result.steps} steps)")
    else:
        log(
            f"pre-trained {result.steps} steps in {elapsed:.0f} s "
            f"({result.images / max(elapsed, 1e-9):.1f} images/s), "
            f"final loss {result.final_loss:.3f}"
        )

    from localdisc.models.ld import LDModel

    model = LDModel.from_pretrained(out)
    if paths:
        from localdisc.data.io import read_image

        # As the pool has them: in the modality's channels (a grey, red-free fundus photograph
        # becomes RGB, which demo_queries' green channel needs) and a fundus image cut to its
        # ROI box; the whole frame squashed showed the network a retina it never saw.
        figure_images = [
            prepare_pool_image(read_image(p)[0], modality, size).transpose(1, 2, 0) / 255.0
            for p in paths
        ]
        names = [p.name for p in paths]
    else:
        figure_images = demo_figure_images(modality, size, seed)
        names = demo_figure_names(modality)
    figures = out / "figures"
    written = {
        "clusters": cluster_figure(
            model, figure_images, figures / "demo_clusters.png", names=names
        ),
        "similarity": similarity_figure(
            model,
            figure_images,
            figures / "demo_similarity.png",
            demo_queries(figure_images[0]) if modality == "fundus" else None,
            names=names,
        ),
        "model": out / "model.safetensors",
        "log": out / "log.csv",
    }
    if modality == "fundus" and not data:
        scores = anatomy_scores(model, size, seed)
        log(
            "clusters against anatomy on 4 generated eyes (Dice of the best single cluster): "
            + ", ".join(f"{name} {value:.2f}" for name, value in scores.items())
        )
        written["landmarks"] = demo_localization(out, size, seed, log)
        written["vessels"] = demo_vessels(out, config, preset.shape_steps, log,
                                          student_steps=preset.student_steps)  # fmt: skip
    return written


def demo_vessels(
    run_dir: Path,
    config: PretrainConfig,
    steps: int,
    log: Callable[[str], None],
    start: str = "stage1.safetensors",
    eyes: int = 2,
    student_steps: int = 0,
) -> Path:
    """Vessels without labels: stage 2 with the simulated vessel prior on cluster 0 (METHOD.md 5)
    from ``start``, a weight file of the demo's run (its stage-1 weights, as the method does);
    outputs A and B on the photograph and on ``eyes`` generated eyes (whose vessels are known:
    Dice printed), with the Sato filter given the prior's vessel fraction and, with
    ``student_steps``, the network of ``localdisc shape-guided vessels`` taught on these images
    (:func:`~localdisc.tasks.self_training.train_student`, painted trees; at 0.5)."""
    from dataclasses import replace

    from localdisc.data.preprocess import fov_from_image
    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.eval.figures import mask_grid
    from localdisc.eval.metrics import dice_score
    from localdisc.models.ld import LDModel
    from localdisc.priors import load_prior
    from localdisc.tasks.benchmark_shape_guided import expected_fraction
    from localdisc.tasks.self_training import StudentConfig, student_probability, train_student
    from localdisc.tasks.shape_guided import segment
    from localdisc.tasks.vesselness import segment_vessels
    from localdisc.tasks.vessels import PAINTED

    shape_dir = run_dir / "shape-guided"
    shape_config = replace(
        config, stage1_steps=0, stage2_steps=steps, clusters=8, prior="simulated:vessels",
        prior_count=16, init_from=str(run_dir / start), val_images=0,
    )  # fmt: skip
    pretrain(shape_config, shape_dir, resume=_own_run(shape_dir, shape_config), log=log)
    model = LDModel.from_pretrained(shape_dir)
    size = config.resolved_pool_size
    fraction = expected_fraction(load_prior("simulated:vessels", size, count=8), tubular=True)
    generated = [synthetic_fundus(size, seed=30_000 + config.seed + i) for i in range(eyes)]
    photograph = retina_photograph(size)
    cases = [("photograph", photograph, None, fov_from_image(photograph))]
    cases += [
        (f"generated eye {i + 1}", e.image, e.vessels, e.fov) for i, e in enumerate(generated)
    ]
    rows, scores = [], {"A": [], "B": [], "Sato": []}
    student = None
    if student_steps:
        scores["taught network"] = []
        side = 16 * max(1, size // 16)  # the U-Net's multiple
        settings = StudentConfig(size=side, crop=side // 2, steps=student_steps, painted=PAINTED,
                                 seed=config.seed, device=config.device)  # fmt: skip
        # With the bar (timestamped lines when not a terminal) every other long phase shows.
        student = train_student([c[1] for c in cases], [c[3] for c in cases], fraction, settings,
                                log=log, progress=config.progress)  # fmt: skip
    for name, image, truth, fov in cases:
        maps = segment(model, image, fov)
        _, sato = segment_vessels(image, fov, threshold=fraction, erode_fov=2)
        found = {"A": maps.mask_a, "B": maps.mask_b, "Sato": sato}
        if student is not None:
            found["taught network"] = student_probability(student, image, fov) >= 0.5
        titles = {}
        for key, mask in found.items():
            titles[key] = key
            if truth is not None:
                scores[key].append(dice_score(mask.astype(np.float32), truth))
                titles[key] = f"{key}: Dice {scores[key][-1]:.2f}"
        rows.append((name, image, {titles[k]: m.astype(np.float32) for k, m in found.items()}))
    text = ", ".join(f"{k} {np.mean(v):.2f}" for k, v in scores.items())
    log(f"vessels without labels (simulated prior, {steps} steps), Dice on generated eyes: {text}")
    if student is not None:
        log(
            "(the taught network's painted trees are drawn as the generated eyes' vessels are, "
            "which flatters it here; on DRIVE's test images `localdisc shape-guided vessels` "
            "reaches Dice 0.772-0.774, Sato at the prior's fraction 0.732: benchmarks/RESULTS.md)"
        )
    return mask_grid(rows, run_dir / "figures" / "demo_vessels.png")


def demo_localization(
    run_dir: Path, size: int, seed: int, log: Callable[[str], None], count: int = 6
) -> Path:
    """One-shot localisation of the optic disc and the fovea on generated fundus images, whose
    true centres the generator knows: one template, ``count`` test images; errors printed."""
    from localdisc.data.synthetic import synthetic_fundus
    from localdisc.tasks.localize import Localizer, SearchConfig, landmark_figure, ncc_localize
    from localdisc.tasks.similarity import load_model

    def eye(i: int) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
        s = synthetic_fundus(size, seed=20_000 + seed + i)
        return s.image, {"optic disc": s.optic_disc, "fovea": s.fovea}

    template, landmarks = eye(0)
    # Generated eyes are left or right at random: try the mirrored template too.
    localizer = Localizer(load_model(run_dir), template, landmarks, SearchConfig(mirror=True))
    errors: dict[str, dict[str, list[float]]] = {"LD": {}, "template matching": {}}
    path = run_dir / "figures" / "demo_landmarks.png"
    for i in range(1, count + 1):
        image, truth = eye(i)
        found = {
            "LD": localizer(image),
            "template matching": ncc_localize(template, landmarks, image, size // 4, mirror=True),
        }
        for method, points in found.items():
            for name, (x, y) in truth.items():
                error = float(np.hypot(points[name].x - x, points[name].y - y))
                errors[method].setdefault(name, []).append(error)
        if i == 1:
            landmark_figure(template, landmarks, image, found, path, truth=truth)
    for method, per_landmark in errors.items():
        text = ", ".join(f"{k} {np.mean(v):.1f} px" for k, v in per_landmark.items())
        log(f"one-shot localisation ({method}, {count} images of {size} px): mean error {text}")
    return path
