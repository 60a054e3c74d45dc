"""The LD network: backbone + embedding head + clustering head (METHOD.md section 1)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localdisc.data.preprocess import MODALITY_CHANNELS, as_raw_image
from localdisc.engine.checkpoint import few_names, refuse_nonfinite
from localdisc.errors import CheckpointError, InputError
from localdisc.models.modes import in_mode
from localdisc.models.normalize import l2_normalize
from localdisc.models.vgg_unet import VGGUNet, conv_bn_relu


@dataclass
class LDConfig:
    """Architecture of an :class:`LDModel` (saved as ``model`` in a run's ``config.json``)."""

    modality: str = "fundus"
    width: int = 16
    dim: int = 32
    clusters: int = 16
    padding: str = "zeros"  # or "circular" / "reflect" / "replicate" for every 3x3 convolution
    depth: int = 5  # VGG16 blocks in the encoder (5: the paper's)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~localdisc.errors.InputError` naming every field out of range."""
        problems = architecture_problems(self.modality, self.width, self.padding, self.depth)
        for key in ("dim", "clusters"):
            if not is_positive_int(getattr(self, key)):
                problems.append(f"{key} must be a positive integer, not {getattr(self, key)!r}")
        if problems:
            raise InputError("invalid LD model config: " + "; ".join(problems))

    @property
    def in_channels(self) -> int:
        return MODALITY_CHANNELS[self.modality]

    @classmethod
    def from_run(cls, run_dir: str | Path) -> LDConfig:
        """The architecture saved in a run directory's ``config.json`` (``run_dir`` may also
        name one of the run's weight files, e.g. ``RUN/stage1.safetensors``)."""
        run_dir, _ = split_weights_path(run_dir)
        config_path = run_dir / "config.json"
        if run_dir.is_file():  # RUN/config.json, a .pt file: named as a file, not a folder
            raise CheckpointError(
                f"{run_dir}: a file, not a run folder; give an LD run folder (the --out of "
                "`localdisc pretrain`) or one of its .safetensors weight files"
            )
        if not run_dir.exists():  # a mistyped --model or --from: not "no config.json"
            raise CheckpointError(f"{run_dir}: no such folder")
        if not config_path.is_file():
            raise CheckpointError(f"{run_dir}: not a localdisc run directory (no config.json)")
        try:
            saved = json.loads(config_path.read_text())
            if isinstance(saved, dict) and "model" not in saved and "segmenter" in saved:
                raise CheckpointError(
                    f"{config_path}: a segmentation model, not an LD run (no model); "
                    "`localdisc predict` takes it"
                )
            if isinstance(saved, dict) and "model" not in saved:
                raise CheckpointError(f"{config_path}: not an LD pre-training run (no model)")
            return cls(**saved["model"])
        except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError, InputError too
            raise CheckpointError(f"{config_path}: unreadable model config ({exc})") from exc


# What a run shares with the run whose weights it starts from: everything but the clustering
# head's K, which stage 2 may change (shape-guided segmentation uses K = 8).
BACKBONE_FIELDS = ("modality", "width", "dim", "padding", "depth")


#: The padding modes of every 3x3 convolution (``nn.Conv2d``'s).
PADDINGS = ("zeros", "circular", "reflect", "replicate")
#: VGG16 blocks an encoder may have (:class:`~localdisc.models.vgg_unet.VGGEncoder`).
DEPTHS = range(2, 6)


def smallest_side(padding: str, depth: int) -> int:
    """The smallest image side an LD network of ``padding`` and ``depth`` takes: 16 (its sides
    are multiples of 16), or ``2 ** depth`` with reflect padding, which torch refuses on the
    1 x 1 maps that a 16-px image has in the fifth block (2 x 2 are needed)."""
    return max(16, 2**depth) if padding == "reflect" else 16


def is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def architecture_problems(modality: str, width: int, padding: str, depth: int) -> list[str]:
    """What is wrong with the fields an LD model and a segmenter share: checked when the config
    is made, not deep in the network (an unknown padding failed at the first forward pass)."""
    problems = []
    if modality not in MODALITY_CHANNELS:
        known = ", ".join(sorted(MODALITY_CHANNELS))
        problems.append(f"modality must be one of {known}, not {modality!r}")
    if not is_positive_int(width):
        problems.append(f"width must be a positive integer, not {width!r}")
    if padding not in PADDINGS:
        problems.append(f"padding must be one of {', '.join(PADDINGS)}, not {padding!r}")
    if not (is_positive_int(depth) and depth in DEPTHS):
        problems.append(f"depth must be {DEPTHS[0]} to {DEPTHS[-1]}, not {depth!r}")
    return problems


def split_weights_path(path: str | Path, weights: str = "model.safetensors") -> tuple[Path, str]:
    """``(run directory, weight file name)`` for a run directory or a ``.safetensors`` file in
    one: ``RUN`` gives ``(RUN, weights)``, ``RUN/stage1.safetensors`` the stage-1 weights."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path.parent, path.name
    return path, weights


#: A pre-training run's weight files that hold the whole LD model (``engine/pretrain.py``).
WHOLE_MODEL_WEIGHTS = {
    "model.safetensors": "the final weights",
    "stage1.safetensors": "the weights at the end of stage 1",
    "model_best.safetensors": "the lowest validation loss",
}


def untrained_clusters(path: str | Path) -> tuple[str, str] | None:
    """Where the clustering head of a run's weights (``path``: a run folder or one of its weight
    files) never trained, ``(what the weights are, what to give instead)``; else ``None``.

    Stage 1 trains the embedding alone, so the head of ``stage1.safetensors``, of any weights of
    a run without stage 2, of the ``model_best.safetensors`` of a run still in stage 1, and of a
    ``model_best.safetensors`` equal to ``stage1.safetensors`` (stage 2 ended by its time budget
    before its first validation, in runs before commit e0fb86b) holds its random init. (A run
    in stage 2 has no ``model_best.safetensors`` before its first stage-2 validation.)"""
    folder, weights = split_weights_path(path)
    try:
        settings = json.loads((folder / "config.json").read_text()).get("pretrain") or {}
    except (OSError, ValueError, AttributeError):
        settings = {}
    finish = "give the run folder or its model.safetensors"
    stage1 = folder / "stage1.safetensors"
    best = folder / "model_best.safetensors"
    if settings.get("stage2_steps") == 0:
        return (
            "weights of a run without stage 2 (stage2_steps 0)",
            "train its stage 2 first (`localdisc shape-guided train --from RUN`)",
        )
    if weights == "stage1.safetensors":
        return "the weights at the end of stage 1", finish
    if weights != best.name or not best.is_file():
        return None
    if not stage1.is_file():  # a run started at stage 2 (`--from`) has none
        if settings.get("stage1_steps", 1) == 0:
            return None
        return "the best weights of a run still in stage 1", "let it finish, then " + finish
    if stage1.stat().st_size == best.stat().st_size and stage1.read_bytes() == best.read_bytes():
        return "the same weights as stage1.safetensors (stage 2 was never validated)", finish
    return None


def check_weights_file(run_dir: Path, weights: str) -> None:
    """Raise :class:`CheckpointError` if the run folder ``run_dir`` (whose ``config.json`` was
    read) lacks ``weights``: an unfinished pre-training run is named as one, with how to finish
    it and which of its weight files there are already (it said only "weights file not found")."""
    if (run_dir / weights).is_file():
        return
    from localdisc.engine.checkpoint import CHECKPOINT_PREFIX, list_checkpoints
    from localdisc.eval.provenance import command_text

    saved = json.loads((run_dir / "config.json").read_text())
    others = [n for n in WHOLE_MODEL_WEIGHTS if n != weights and (run_dir / n).is_file()]
    instead = " or ".join(f"{run_dir / n} ({WHOLE_MODEL_WEIGHTS[n]})" for n in others)
    pretrain = saved.get("pretrain")
    if not isinstance(pretrain, dict) or (run_dir / "model.safetensors").is_file():
        raise CheckpointError(
            f"{run_dir / weights}: weights file not found"
            + (f"; give {instead}" if instead else "")
        )
    kept = list_checkpoints(run_dir / "checkpoints")
    stopped = (
        f"its last checkpoint is step {int(kept[-1].name.removeprefix(CHECKPOINT_PREFIX))}"
        if kept
        else "no checkpoint yet"
    )
    env = saved.get("environment") or {}
    argv = env.get("argv")
    program = Path(str(argv[0])) if isinstance(argv, list) and argv else Path()
    if "localdisc" not in (program.name, program.parent.name):  # `localdisc`, `python -m`
        argv = None  # started from Python, or an older run: the command's shape instead
    if argv and argv[1:2] in (["pretrain"], ["shape-guided"]):
        resume = "" if "--resume" in argv else " --resume"
        how = f"its command and --resume (`{command_text(argv)}{resume}`; the saved settings apply)"
    elif argv:  # `demo`, a benchmark's preset: the same command resumes its own run
        how = f"its command again (`{command_text(argv)}`)"
    else:
        name = "shape-guided train" if pretrain.get("prior") else "pretrain"
        how = f"`localdisc {name} --data ... --out {run_dir} --resume` (the saved settings apply)"
    processes = env.get("processes")
    if isinstance(processes, int) and processes > 1:  # one process resumes none of it
        how += f", launched with torchrun as it was ({processes} processes in all)"
    raise CheckpointError(
        f"{run_dir}: an unfinished pre-training run (no {weights} yet; {stopped}): interrupted, "
        f"or still running; finish it with {how}" + (f", or give {instead}" if instead else "")
    )


def run_method(run_dir: str | Path) -> str:
    """The ``--method`` the pre-training run in ``run_dir`` used: ``"ld"``, or a peer method of
    :mod:`localdisc.methods` (``"ld"`` where ``config.json`` names none, as in runs made before
    peer methods existed)."""
    try:
        method = json.loads((Path(run_dir) / "config.json").read_text())["pretrain"]["method"]
    except (OSError, ValueError, KeyError, TypeError):
        return "ld"
    return method if isinstance(method, str) else "ld"


def refuse_peer_run(path: str | Path, method: str | None = None) -> None:
    """Raise :class:`CheckpointError` if ``path`` (a run folder or one of its weight files) holds
    a peer method's run (``method``: the run's, if known): its encoder is trained, but LD's
    embedding and clustering heads are as initialised, so embeddings and clusters from it would
    be noise that looks like a result."""
    run_dir, _ = split_weights_path(path)
    method = method or run_method(run_dir)
    if method != "ld":
        raise CheckpointError(
            f"{path}: a `localdisc pretrain --method {method}` run, not an LD one: {method} does "
            "not train LD's embedding and clustering heads, so the run has no embeddings or "
            "clusters to use (similarity, localize, view, shape-guided need an LD run); it is a "
            f"pre-trained encoder for `localdisc finetune --init {run_dir}` and `localdisc "
            "benchmark transfer --inits`"
        )


def weights_mismatch(module: nn.Module, state: dict[str, Tensor]) -> str:
    """What keeps ``state`` from loading into ``module``, in short (a few names of the keys
    missing, unexpected, of another shape, or of another dtype), or ``""``; torch's message
    lists every key. A non-floating tensor (an integer file's) for a floating one of the model is
    of another dtype: ``load_state_dict`` would cast it into a broken model. Floats of another
    precision (float16, bfloat16, float64) are cast, as torch does."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if shapes:  # the first one's shapes say which setting differs
        first = shapes[0]
        shape, wanted = list(state[first].shape), list(expected[first].shape)
        shapes[0] = f"{first} ({shape} in the file, {wanted} in the model)"
    dtypes = [
        k
        for k, v in expected.items()
        if k in state and v.is_floating_point() and not state[k].is_floating_point()
    ]
    if dtypes:
        first = dtypes[0]
        dtype, wanted = str(state[first].dtype), str(expected[first].dtype)
        dtypes[0] = f"{first} ({dtype.removeprefix('torch.')} in the file, "
        dtypes[0] += f"{wanted.removeprefix('torch.')} in the model)"
    found = [
        ("missing", missing),
        ("unexpected", unexpected),
        ("of another shape", shapes),
        ("of another dtype", dtypes),
    ]
    return "; ".join(f"{len(keys)} {label}: {few_names(keys)}" for label, keys in found if keys)


def load_matching_weights(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """``module.load_state_dict(state)``; weights that do not fit raise
    :class:`CheckpointError` naming ``path`` and, in short, the keys that differ, and so do
    weights holding NaN or inf: a file damaged past its (intact) header, or a diverged
    training, which loaded silently and predicted nothing (all-background masks)."""
    problems = weights_mismatch(module, state)
    if problems:
        raise CheckpointError(
            f"{path}: weights do not match the model of its config.json ({problems})"
        )
    refuse_nonfinite(state, path, "a damaged file or diverged training")
    module.load_state_dict(state)


def head(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv + BN + ReLU + 3x3 conv, the shape of both LD heads."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
    )


class LDModel(nn.Module):
    """Local discrimination network of Chen et al. (TPAMI 2023).

    ``forward(x)`` returns the per-pixel embeddings ``v`` ([N, D, H, W], unit L2 norm over D) and,
    when ``with_clusters``, the soft cluster assignments ``a`` ([N, K, H, W], sigmoid then L1
    normalised over K so that ``a.sum(1) == 1``). Inputs are normalised images whose height and
    width are multiples of 16; :meth:`embed` and :meth:`cluster` take raw images of any size.
    """

    def __init__(self, config: LDConfig | None = None, **kwargs: object) -> None:
        super().__init__()
        self.config = config or LDConfig(**kwargs)  # type: ignore[arg-type]
        self.config.validate()  # again: its fields may have changed since it was made
        #: The run folder :meth:`from_pretrained` loaded this model from (its settings, e.g.
        #: the patch size of pre-training, are read from there by the similarity tools).
        self.run_dir: Path | None = None
        #: The weight file it loaded (errors name it).
        self.weights_path: Path | None = None
        #: The ``--method`` of that run: a peer method's (not ``"ld"``) has untrained heads.
        self.method = "ld"
        #: Set by :meth:`from_pretrained` where the clustering head of the weights loaded never
        #: trained (:func:`untrained_clusters`: ``(what the weights are, what to give instead)``,
        #: e.g. ``RUN/stage1.safetensors``): :meth:`cluster` and :meth:`embed_and_cluster`
        #: refuse then, as ``localdisc shape-guided`` does; :meth:`embed` works. Set it to
        #: ``None`` to look at the random head's clusters all the same.
        self.untrained_clusters: tuple[str, str] | None = None
        self.backbone = VGGUNet(self.config.in_channels, self.config.width, self.config.depth)
        c = self.backbone.out_channels
        self.embedding_head = head(c, self.config.dim)
        self.cluster_head = head(c, self.config.clusters)
        if self.config.padding != "zeros":
            # Zero padding lets a network whose receptive field spans the image encode absolute
            # position (a shortcut for patch discrimination on small images); circular padding
            # removes the image border. Conv2d reads padding_mode at call time.
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    module.padding_mode = self.config.padding

    @property
    def encoder(self) -> nn.Module:
        """The VGG encoder: what transfer learning takes."""
        return self.backbone.encoder

    def forward(
        self, x: Tensor, with_clusters: bool = True, cluster_count: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Embeddings of every image; assignments of the first ``cluster_count`` (default all).

        Pre-training needs no clusters for the mixed images, and skipping them saves the
        clustering head's full-resolution activations for a fifth of the batch.
        """
        features = self.backbone(x)
        v = l2_normalize(self.embedding_head(features).float(), dim=1)
        if not with_clusters:
            return v, None
        a = torch.sigmoid(self.cluster_head(features[:cluster_count]).float())
        return v, a / a.sum(1, keepdim=True).clamp_min(1e-12)

    # --- inference on raw images -------------------------------------------------------------
    def _prepare(self, image: np.ndarray | Tensor) -> tuple[Tensor, int, int]:
        """Raw image (as :func:`as_raw_image` takes it) -> padded normalised batch."""
        from localdisc.data.preprocess import to_modality_channels
        from localdisc.data.views import normalize

        # RGB X-ray -> luminance, grey fundus -> three channels.
        arr = to_modality_channels(as_raw_image(image), self.config.modality)
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        h, w = x.shape[-2:]
        # The network needs multiples of 16 (and, reflect-padded, at least smallest_side);
        # replicate-pad and crop the outputs back.
        least = smallest_side(self.config.padding, self.config.depth)
        pad_h, pad_w = (max(least, side + (-side) % 16) - side for side in (h, w))
        x = F.pad(normalize(x, self.config.modality), (0, pad_w, 0, pad_h), mode="replicate")
        # The weights' dtype too: a model cast with .to(torch.bfloat16) takes raw float32 images.
        weight = next(self.parameters())
        return x.to(device=weight.device, dtype=weight.dtype), h, w

    @torch.no_grad()
    def _infer(self, image: np.ndarray | Tensor, with_clusters: bool) -> tuple[Tensor, Tensor]:
        """``(v, a)`` of one raw image cropped to its size (``a`` empty without clusters)."""
        if self.method != "ld":
            refuse_peer_run(self.run_dir or Path("this model"), self.method)
        if with_clusters and self.untrained_clusters is not None:
            what, instead = self.untrained_clusters
            raise CheckpointError(
                f"{self.weights_path or 'this model'}: {what}, whose clustering head never "
                f"trained (stage 1 trains the embedding alone): its clusters would be the head's "
                f"random weights; {instead} (embed() works with these weights; set "
                "model.untrained_clusters = None to see the random clusters all the same)"
            )
        x, h, w = self._prepare(image)
        with in_mode(self, training=False):
            v, a = self(x, with_clusters=with_clusters)
        a = a if a is not None else v.new_empty(1, 0, *v.shape[-2:])
        return v[0, :, :h, :w], a[0, :, :h, :w]

    def embed(self, image: np.ndarray | Tensor) -> Tensor:
        """Per-pixel embeddings of one raw image: a [D, H, W] tensor of unit vectors.

        ``image``: one image as :func:`as_raw_image` takes it (``H x W (x C)`` floats in [0, 1],
        ``uint8``/``uint16``, or a ``[C, H, W]`` tensor); a batch goes to :meth:`forward`."""
        return self._infer(image, with_clusters=False)[0]

    def cluster(self, image: np.ndarray | Tensor) -> Tensor:
        """Soft cluster assignments of one raw image: a [K, H, W] tensor summing to 1 over K.

        Refused (:class:`CheckpointError`) for weights whose clustering head never trained
        (:attr:`untrained_clusters`: stage 1's), as :meth:`embed_and_cluster` is."""
        return self._infer(image, with_clusters=True)[1]

    def embed_and_cluster(self, image: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`embed` and :meth:`cluster` of one raw image from a single forward pass."""
        return self._infer(image, with_clusters=True)

    # --- persistence ------------------------------------------------------------------------
    def save(self, run_dir: str | Path) -> None:
        """Write ``model.safetensors`` and ``encoder.safetensors`` (atomically) and the config."""
        from localdisc.engine.checkpoint import atomic_save_safetensors, atomic_write_text

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(self.state_dict(), run_dir / "model.safetensors")
        atomic_save_safetensors(self.encoder.state_dict(), run_dir / "encoder.safetensors")
        config_path = run_dir / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        config["model"] = asdict(self.config)
        atomic_write_text(config_path, json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(
        cls, run_dir: str | Path, *, weights: str = "model.safetensors", device: str = "cpu"
    ) -> LDModel:
        """Load a model from a run directory (``config.json`` + safetensors weights, no pickle).

        ``run_dir`` may name a weight file of the run instead, e.g. ``RUN/stage1.safetensors``
        (the weights at the end of stage 1); ``weights`` is then ignored. A peer method's run
        (``pretrain --method simclr`` ...) loads for its encoder, but its :meth:`embed` and
        :meth:`cluster` refuse: it did not train their heads. Weights whose clustering head
        never trained (stage 1's: :func:`untrained_clusters`) load too, but :meth:`cluster`
        refuses (:attr:`untrained_clusters`). ``device``: ``auto``, ``cpu``, ``cuda``,
        ``cuda:N`` or ``mps`` (:func:`~localdisc.engine.distributed.resolve_device`), or
        another device torch knows. Building the network draws its initial weights from torch's
        global random state, as building any torch module does; the file's then replace them.
        """
        from localdisc.engine.checkpoint import load_safetensors
        from localdisc.engine.distributed import resolve_device

        resolved = resolve_device(device, other=True)  # "auto"; a misspelt one named first
        run_dir, weights = split_weights_path(run_dir, weights)
        model = cls(LDConfig.from_run(run_dir))
        check_weights_file(run_dir, weights)
        state = load_safetensors(run_dir / weights)
        if state.keys() == model.encoder.state_dict().keys():  # "backbone.encoder." stripped
            raise CheckpointError(
                f"{run_dir / weights}: the encoder alone (what `localdisc finetune --init` "
                f"reads), not a whole LD model; give the run folder {run_dir} instead (its "
                "model.safetensors)"
            )
        load_matching_weights(model, state, run_dir / weights)
        model.run_dir = run_dir
        model.weights_path = run_dir / weights
        model.method = run_method(run_dir)
        model.untrained_clusters = untrained_clusters(run_dir / weights)
        return model.to(resolved).eval()
