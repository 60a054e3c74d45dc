"""The unlabelled pre-training pool, decoded once and held in memory as uint8.

The authors' pipeline decodes, crops and resizes every image at every step on the CPU, which
starves a GPU. Here each pool image is read once (threads: decoders release the GIL), cropped to
its fundus region of interest, resized to ``pool_size`` and stored as uint8 in one tensor
``[N, C, P, P]`` that can live on the GPU; the per-step augmentation then runs there too.
Memory: ``N * C * P * P`` bytes (1 000 fundus images at 512 take 0.8 GB).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from localdisc.data.io import DIM_BELOW, ImageMeta, dim_note, header_notes, read_image
from localdisc.data.preprocess import resize_image, roi_crop, to_modality_channels
from localdisc.errors import DatasetError, ImageReadError, LocaldiscError, ReaderSetupError


def prepare_pool_image(image: np.ndarray, modality: str, pool_size: int) -> np.ndarray:
    """Float H x W x C image in [0, 1] -> uint8 C x P x P array as the pool stores it."""
    image = to_modality_channels(image, modality)
    if modality == "fundus":
        image = roi_crop(image)[0]
    image = resize_image(image, (pool_size, pool_size))
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8).transpose(2, 0, 1)


def _decode(
    paths: Sequence[Path],
    modality: str,
    pool_size: int,
    *,
    workers: int,
    skip_bad: bool,
    progress: Callable[[int], None] | None = None,
    metas: dict[Path, ImageMeta] | None = None,
) -> list[np.ndarray | str]:
    """Per path, in order: its pool array, or (``skip_bad``) the reason it could not be read.
    ``metas``, when given, is filled with the :class:`~localdisc.data.io.ImageMeta` of each
    path read, which the decoding gives at no cost."""

    def one(path: Path) -> np.ndarray | str:
        try:
            image, meta = read_image(path)
            if metas is not None:
                metas[path] = meta
            return prepare_pool_image(image, modality, pool_size)
        except ImageReadError as exc:
            if not skip_bad or isinstance(exc, ReaderSetupError):  # the installation's: all fail
                raise
            return exc.reason

    results: list[np.ndarray | str] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for result in pool.map(one, paths):
            results.append(result)
            if progress is not None:
                progress(1)
    return results


def load_pool(
    paths: Sequence[Path],
    modality: str,
    pool_size: int,
    *,
    workers: int = 4,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Decode ``paths`` into a uint8 tensor ``[N, C, P, P]``.

    Returns the tensor and the list of skipped ``(path, reason)`` (empty unless ``skip_bad``).
    An unreadable file raises :class:`ImageReadError` naming it, unless ``skip_bad``; so does a
    pool of which no file could be read. No paths at all raise :class:`DatasetError`.
    """
    if not paths:
        raise DatasetError("no image paths given: a pool needs at least one image file")
    results = _decode(
        paths, modality, pool_size, workers=workers, skip_bad=skip_bad, progress=progress
    )
    arrays = [r for r in results if not isinstance(r, str)]
    skipped = [(p, r) for p, r in zip(paths, results, strict=True) if isinstance(r, str)]
    if not arrays:
        raise _none_readable(paths, results)
    return torch.from_numpy(np.stack(arrays)), skipped


def _none_readable(paths: Sequence[Path], results: Sequence[np.ndarray | str]) -> ImageReadError:
    """The error for a pool of which ``skip_bad`` skipped every file (``results`` as
    :func:`_decode` gives them, all reasons): it names the first file and why it was skipped."""
    which = f"all {len(paths)} files" if len(paths) > 1 else "its only file"
    return ImageReadError(
        paths[0], f"{results[0]}; no readable image in the pool ({which} skipped)"
    )


def synthetic_pool(
    n: int, modality: str, pool_size: int, seed: int = 0, *, hard: bool = False
) -> torch.Tensor:
    """A pool of ``n`` generated images (the demo's data when no data set is present);
    ``hard``: the radiographs of ``synthetic_xray_hard``."""
    from localdisc.data import synthetic

    if n < 1:
        raise DatasetError(f"synthetic_{modality}: a generated pool needs n >= 1 images, not {n}")
    if seed < 0:  # numpy's SeedSequence would fail with a bare ValueError deep in a traceback
        raise DatasetError(f"synthetic_{modality}: generated images need a seed >= 0, not {seed}")
    if modality == "fundus":
        make = synthetic.synthetic_fundus
    else:
        make = partial(synthetic.synthetic_xray, hard=hard)
    arrays = [
        prepare_pool_image(make(pool_size, seed + i).image, modality, pool_size) for i in range(n)
    ]
    return torch.from_numpy(np.stack(arrays))


def _say_dim_images(
    results: Sequence[np.ndarray | str], names: Sequence[str], log: Callable[[str], None]
) -> None:
    """One line through ``log`` naming the decoded pool images (``results``, as
    :func:`_decode` gives them) that use under 1/8 of the intensity range
    (:func:`~localdisc.data.io.dim_note`).

    The pool keeps their intensities, as fine-tuning reads them, but its uint8 copy of a 12-bit
    radiograph in a 16-bit file keeps 17 grey levels. Checked on the arrays already decoded (a
    second read of a large pool would take minutes)."""
    peaks = [
        (n, r.max() / 255) for n, r in zip(names, results, strict=True) if not isinstance(r, str)
    ]
    levels = max((int(round(peak * 255)) + 1 for _, peak in peaks if peak < DIM_BELOW), default=0)
    note = dim_note(peaks, "pool image(s)", f"their pool copies keep {levels} grey levels or fewer")
    if note is not None:
        log(note)


def _source_name(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` (its folder or data set root) where it lies under it, else
    whole: the name by which a figure or a run's record names a pool image."""
    if root is not None:
        for base in (root, root.resolve()):
            try:
                return path.relative_to(base).as_posix()
            except ValueError:
                continue
    return str(path)


def _declared_modality(spec: str) -> str | None:
    """The modality of a known or generated data set's spec (``skimage:retina``: fundus);
    ``None`` for a folder, or a set of either."""
    from localdisc.data.datasets import DATASETS, parse_data_spec

    if spec.lower() == "skimage:retina":
        return "fundus"
    name = parse_data_spec(spec)[0]
    return DATASETS[name].default_modality if name in DATASETS else None


def guess_pool_modality(specs: Sequence[str], log: Callable[[str], None] | None = None) -> str:
    """The modality of the images ``specs`` name: a known or generated set's own, else guessed
    from a folder's first images as ``finetune`` guesses a folder's (grey: X-ray, colour:
    fundus; :func:`~localdisc.data.datasets.guess_modality`, whose note on images that
    disagree ``log`` hears, prefixed by the spec). Specs of two modalities are refused, naming
    each."""
    from localdisc.data.datasets import GUESS_LOOKS_AT, guess_modality, pool_image_paths

    found: dict[str, str] = {}
    for spec in specs:
        kind = _declared_modality(spec)
        if kind is None:
            # up to 50 images: blank or unreadable ones tell nothing (it said fundus for them)
            said = None if log is None else lambda line, spec=spec: log(f"note: {spec}: {line}")
            files = pool_image_paths(spec)
            unreadable: list[LocaldiscError] = []
            kind = guess_modality(files[:GUESS_LOOKS_AT], said, unreadable)
            if kind is None:
                looked = min(len(files), GUESS_LOOKS_AT)
                raise _no_modality(spec, looked, len(files), unreadable, others=len(specs) > 1)
        found[spec] = kind
    if len(set(found.values())) > 1:
        listed = "; ".join(f"{spec}: {kind}" for spec, kind in found.items())
        raise DatasetError(f"--data holds images of two modalities ({listed}); give --modality")
    return next(iter(found.values()))


def _no_modality(
    spec: str, looked: int, listed: int, unreadable: Sequence[LocaldiscError], *, others: bool
) -> DatasetError:
    """The error for a spec of ``listed`` files whose first ``looked`` tell no modality, of
    which those in ``unreadable`` (their read errors) could not be read.

    Where none could be read, it says so with the first file's error (a clone without git-lfs
    leaves text pointers named ``.png``): blaming the modality, its advice of --modality only
    led to that error. Where those were all the files, no option reads them: beside ``others``
    (more specs), the way on is to fetch them or leave the spec out."""
    if not unreadable:
        return DatasetError(
            f"{spec}: its first images are blank, which tells no modality; give --modality"
        )
    first = unreadable[0]
    if len(unreadable) < looked:
        return DatasetError(
            f"{spec}: its first images are blank or unreadable (first unreadable: {first}), "
            "which tells no modality; give --modality"
        )
    if looked < listed:
        return DatasetError(
            f"{spec}: none of its first {looked} images can be read (first: {first}), which "
            "tells no modality; give --modality"
        )
    which = f"none of its {listed} images can" if listed > 1 else "its only image cannot"
    advice = ": fetch them, or leave it out of --data" if others else ""
    return DatasetError(f"{spec}: {which} be read (first: {first}){advice}")


def resolve_pool(
    specs: Sequence[str],
    modality: str,
    pool_size: int,
    *,
    seed: int = 0,
    workers: int = 4,
    max_images: int | None = None,
    skip_bad: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = False,
    names: list[str] | None = None,
    files: list[Path] | None = None,
    unreadable: Collection[Path] | None = None,
) -> tuple[torch.Tensor, list[tuple[Path, str]]]:
    """Decode every image named by ``specs`` into one uint8 pool tensor (with a progress bar
    of the files decoded where ``progress``: a large pool takes minutes).

    ``names``, when given, is filled with the source of each pool image, in the pool's order:
    a file's path relative to its folder or data set root (``sub/a.png``), ``synthetic_fundus 3``
    for the generated image of seed ``seed + 3``, ``skimage retina``. Figures name the images
    they show by it; a list of strings, as the tensor carries no paths. ``files``, when given,
    is filled with the resolved path of each file read, in the pool's order.

    ``unreadable`` (resolved paths) plans the pool instead: nothing is decoded or generated, the
    files listed there count as unreadable (``skip_bad``'s skips) and every other one as read,
    and each image of the tensor is empty (``[N, 0, 0, 0]``): :func:`pool_files`.

    A spec is a folder of images, ``NAME:ROOT`` for a known data set (labels unused),
    ``synthetic_fundus[:N]`` / ``synthetic_xray[:N]`` / ``synthetic_xray_hard[:N]`` for generated
    images, or ``skimage:retina`` for the fundus photograph that scikit-image ships.
    The pool holds the specs' images in the order given (a folder's sorted by path);
    ``max_images`` keeps the first N of them, whatever their kind of spec; with ``skip_bad``,
    files it left out take the places of skipped files, in the same order, until N images are
    read or the files run out; skipped files are an error only when no image at all is left.

    Each image enters the pool once: a file that an earlier spec already brought in (the same
    spec twice, a folder and a sub-folder of it, a folder linked in twice; compared by resolved
    path) and a generated image already there (``synthetic_xray:4`` after ``synthetic_xray:8``:
    same seeds) are left out, and one line per such spec says so through ``log``. Silently
    doubled images would weigh twice in sampling; an error would refuse overlapping sources
    that are fine once read once, and the runs saved with them could not be resumed.
    ``skimage:retina`` is the exception: each repeat adds a copy of that one photograph (the
    demo weights it so).

    Files whose images use under 1/8 of the intensity range (12-bit data in 16-bit files) are
    named in one line through ``log``; their intensities are kept, as fine-tuning reads them.
    So are, each in a line, files that carry an EXIF orientation, which is not applied, and
    files of several frames (a multi-frame DICOM, a TIFF stack, an animated GIF), of which the
    pool holds the first (:func:`~localdisc.data.io.header_notes`, from the headers the
    decoding read): as ``predict`` and ``localize`` say them.
    """
    from localdisc.data.datasets import parse_data_spec, pool_image_paths

    size = pool_size
    planning = unreadable is not None
    metas: dict[Path, ImageMeta] = {}  # of the files read, as their decoding gave them
    decode = (
        partial(_decode, metas=metas)
        if unreadable is None
        else _planned_decode({Path(p) for p in unreadable})
    )
    # In the order of ``specs``; a list of indices stands for files of ``paths``, all decoded
    # at once below.
    parts: list[torch.Tensor | list[int]] = []
    part_names: list[list[str]] = []  # for a tensor of ``parts``, its images' names
    paths: list[Path] = []
    path_names: list[str] = []  # of each of ``paths``
    # Files that ``max_images`` left out, in listing order, with their spec's part and root:
    # with ``skip_bad`` they take the places of skipped files (below).
    spare: list[tuple[list[int], Path, Path, Path | None]] = []  # part, resolved, listed, root
    taken = 0  # images in the pool so far: ``max_images`` counts every kind of spec

    def room(n: int) -> int:
        """How many of ``n`` more images fit under ``max_images``."""
        return n if max_images is None else max(0, min(n, max_images - taken))

    if not specs:
        raise DatasetError(
            "no pre-training data: give --data (in Python PretrainConfig.data) FOLDER or NAME:ROOT"
        )
    retina: torch.Tensor | None = None
    owner: dict[Path, str] = {}  # resolved file -> the spec that brought it into the pool
    generated: dict[str, tuple[int, list[str]]] = {}  # generator -> images made, by which specs

    def say_repeated(spec: str, repeated: int, total: int, earlier: Sequence[str]) -> None:
        """One line for a spec whose images, some or all, are in the pool already."""
        sources = list(dict.fromkeys(earlier))
        if sources == [spec] and repeated == total:
            log(f"{spec}: given more than once; its images are used once")
            return
        if total == 1:
            which = "its image is"
        elif repeated == total:
            which = f"all {total} images are"
        else:
            which = f"{repeated} of the {total} images {'is' if repeated == 1 else 'are'}"
        log(
            f"{spec}: {which} in the pool already, from {', '.join(sources)}; "
            "each image is used once"
        )

    for spec in specs:
        name, _, arg = spec.partition(":")
        name = name.lower()  # as data set names everywhere (parse_data_spec)
        if name in ("synthetic_fundus", "synthetic_xray", "synthetic_xray_hard"):
            kind = name.split("_")[1]
            if kind != modality or not (arg or "32").isdigit():
                raise DatasetError(
                    f"{spec}: expected synthetic_{modality}[:N] for a {modality} run"
                )
            count = int(arg or 32)
            if count < 1:  # np.stack of no images would fail without naming the spec
                raise DatasetError(f"{spec}: a generated pool needs N >= 1 images, not {count}")
            # Image i has seed ``seed + i``: the images made so far are a prefix of this spec's.
            made, by = generated.get(name, (0, []))
            if made:
                say_repeated(spec, min(made, count), count, by)
            new = room(max(0, count - made))
            if new:
                hard = name.endswith("_hard")
                parts.append(
                    _planned_images(new)
                    if planning
                    else synthetic_pool(new, modality, size, seed=seed + made, hard=hard)
                )
                part_names.append([f"{name} {made + i}" for i in range(new)])
                taken += new
                generated[name] = (made + new, [*by, spec])
        elif spec.lower() == "skimage:retina":
            if room(1):
                if retina is None and planning:
                    retina = _planned_images(1)
                if retina is None:  # decoded once however often the spec repeats
                    import skimage.data

                    image = skimage.data.retina().astype(np.float32) / 255.0
                    retina = torch.from_numpy(prepare_pool_image(image, modality, size))[None]
                parts.append(retina)
                part_names.append(["skimage retina"])
                taken += 1
        else:
            kind = _declared_modality(spec)
            if kind not in (None, modality):  # jsrt_scr was trained as fundus without a word
                raise DatasetError(
                    f"{spec}: {parse_data_spec(spec)[0]} holds {kind} images, and this run is of "
                    f"{modality} ones: "
                    f"pre-train on it as {kind} (--modality {kind}; {kind}=SPEC in a benchmark's "
                    "--pool)"
                )
            listed = pool_image_paths(spec)  # listed even when none fits: checks the spec
            fresh: dict[Path, Path] = {}  # resolved -> as listed, for files not in the pool
            earlier = []
            for path in listed:
                key = path.resolve()
                if key in owner or key in fresh:  # in fresh: a file linked twice under it
                    earlier.append(owner.get(key, spec))
                else:
                    fresh[key] = path
            if earlier:
                say_repeated(spec, len(earlier), len(listed), earlier)
            items = list(fresh.items())
            count = room(len(items))
            owner.update((key, spec) for key, _ in items[:count])
            if count or (skip_bad and items):
                root = parse_data_spec(spec)[1]
                indices = list(range(len(paths), len(paths) + count))
                parts.append(indices)
                part_names.append([])
                paths.extend(path for _, path in items[:count])
                path_names.extend(_source_name(path, root) for _, path in items[:count])
                taken += count
                if skip_bad:
                    spare.extend((indices, key, path, root) for key, path in items[count:])
    results: list[np.ndarray | str] = []
    if paths:
        from localdisc.engine.monitor import ProgressBar  # here: the engine builds on data

        if not planning:
            log(f"decoding {len(paths)} pool images at {size} x {size} ...")
        shown = progress and not planning
        with ProgressBar(len(paths), enabled=shown, title="decoding", unit="image") as bar:
            done = 0

            def decoded(count: int) -> None:
                nonlocal done
                done += count
                bar.update(done)

            results = decode(paths, modality, size, workers=workers, skip_bad=skip_bad,
                             progress=decoded)  # fmt: skip
        # --skip-bad: files left out by max_images, in listing order, take the skipped files'
        # places until max_images images are read or the files run out (no file is skipped
        # without --skip-bad, so the pool is then the same as ever).
        seen = set(owner)  # a file listed by two specs is one candidate, at its first place
        unique = []
        for candidate in spare:
            if candidate[1] not in seen:
                seen.add(candidate[1])
                unique.append(candidate)
        spare = unique
        while spare and max_images is not None:
            need = max_images - taken + sum(isinstance(r, str) for r in results)
            if need <= 0:
                break
            more, spare = spare[:need], spare[need:]
            for indices, _, path, root in more:
                indices.append(len(paths))  # after the spec's other files: listing order
                paths.append(path)
                path_names.append(_source_name(path, root))
            taken += len(more)
            results += decode([m[2] for m in more], modality, size, workers=workers,
                              skip_bad=skip_bad)  # fmt: skip
        tensor_parts = any(isinstance(part, torch.Tensor) for part in parts)
        if not tensor_parts and all(isinstance(r, str) for r in results):
            raise _none_readable(paths, results)  # --skip-bad left nothing at all: say why
        if not planning:
            _say_dim_images(results, path_names, log)
            for note in header_notes([metas[p] for p in paths if p in metas], "pool"):
                log(note)
        # Two folders' "0.png" were one name in a run's val_names and figure titles: a name
        # that more than one read file has is the file's whole path.
        counts = Counter(
            n for n, r in zip(path_names, results, strict=True) if isinstance(r, np.ndarray)
        )
        path_names = [
            Path(os.path.abspath(path)).as_posix() if counts[n] > 1 else n  # links kept
            for n, path in zip(path_names, paths, strict=True)
        ]
    skipped = [(p, r) for p, r in zip(paths, results, strict=True) if isinstance(r, str)]
    tensors: list[torch.Tensor] = []
    for part, made in zip(parts, part_names, strict=True):
        if isinstance(part, list):
            read = [i for i in part if not isinstance(results[i], str)]
            if read:
                tensors.append(torch.from_numpy(np.stack([results[i] for i in read])))
                if names is not None:
                    names.extend(path_names[i] for i in read)
                if files is not None:
                    files.extend(paths[i].resolve() for i in read)
        else:
            tensors.append(part)
            if names is not None:
                names.extend(made)
    if not tensors:
        raise DatasetError(f"no images found in {', '.join(specs)}")
    return torch.cat(tensors), skipped


def _planned_images(n: int) -> torch.Tensor:
    """``n`` images of a planned pool (:func:`resolve_pool`'s ``unreadable``): empty ones."""
    return torch.empty((n, 0, 0, 0), dtype=torch.uint8)


def _planned_decode(unreadable: set[Path]) -> Callable[..., list[np.ndarray | str]]:
    """:func:`_decode` for a planned pool: the files in ``unreadable`` (resolved) skipped, as
    ``skip_bad`` skipped them when the pool was read, the others read as empty images."""

    def decode(paths: Sequence[Path], *_: object, **__: object) -> list[np.ndarray | str]:
        return [
            "unreadable when pooled" if p.resolve() in unreadable else np.empty((0, 0, 0), np.uint8)
            for p in paths
        ]

    return decode


def pool_files(
    specs: Sequence[str],
    modality: str,
    *,
    max_images: int | None = None,
    skip_bad: bool = False,
    unreadable: Collection[Path] = (),
) -> list[Path]:
    """The files :func:`resolve_pool` would read from ``specs`` now (resolved, the pool's order),
    listed without decoding any: ``unreadable`` (resolved paths) are the files that a pool read
    with ``skip_bad`` skipped, which count as skipped again. Whether a run's finished pool is
    still what its data give (:func:`files_sha256`)."""
    files: list[Path] = []
    resolve_pool(specs, modality, 1, max_images=max_images, skip_bad=skip_bad,
                 log=lambda _: None, files=files, unreadable=unreadable)  # fmt: skip
    return files


def files_sha256(files: Collection[Path]) -> str:
    """The SHA-256 of a pool's ``files`` as a set (their resolved paths, sorted): the same for
    the same files, whatever the order the specs listed them in."""
    text = "\n".join(sorted(Path(f).as_posix() for f in files))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
