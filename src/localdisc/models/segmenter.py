"""The transfer network: a (pre-trained) VGG encoder, a new U-Net decoder, one sigmoid channel.

METHOD.md section 4 (Chen et al., TPAMI 2023): only the encoder of an LD model is transferred; a
new, randomly initialised decoder of the same U-Net shape ends in one output channel.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from localdisc.data.preprocess import (
    MODALITY_CHANNELS,
    as_raw_image,
    resize_image,
    to_modality_channels,
)
from localdisc.errors import CheckpointError, InputError
from localdisc.models.ld import (
    LDConfig,
    LDModel,
    architecture_problems,
    check_weights_file,
    is_positive_int,
    load_matching_weights,
    smallest_side,
    split_weights_path,
)
from localdisc.models.modes import in_mode
from localdisc.models.vgg_unet import UNetDecoder, VGGEncoder


@dataclass
class SegmenterConfig:
    """Architecture and input size of a :class:`Segmenter` (``segmenter`` in ``config.json``)."""

    modality: str = "fundus"
    width: int = 16
    padding: str = "zeros"
    size: int = 512  # images are resized to size x size, as in training
    depth: int = 5  # encoder blocks, as the LD run it starts from

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~localdisc.errors.InputError` naming every field out of range."""
        problems = architecture_problems(self.modality, self.width, self.padding, self.depth)
        if not problems:  # the size's unit depends on a valid depth
            # Each block below the first halves the image and the decoder doubles it back.
            unit = 2 ** (self.depth - 1)
            if not (is_positive_int(self.size) and self.size % unit == 0):
                problems.append(f"size must be a positive multiple of {unit} (a network of depth "
                                f"{self.depth}), not {self.size!r}")  # fmt: skip
            elif self.size < (least := smallest_side(self.padding, self.depth)):
                # torch cannot reflect-pad the 1 x 1 maps of the deepest block
                problems.append(f"padding reflect needs size >= {least} with depth "
                                f"{self.depth} (2 x 2 pixels in the deepest block), "
                                f"not {self.size}")  # fmt: skip
        if problems:
            raise InputError("invalid segmenter config: " + "; ".join(problems))

    @property
    def in_channels(self) -> int:
        return MODALITY_CHANNELS[self.modality]


class Segmenter(nn.Module):
    """VGG16-BN encoder + U-Net decoder + 1x1 convolution to one logit per pixel.

    ``forward`` returns logits ``[N, 1, H, W]``; :meth:`predict` takes a raw image of any size and
    returns its probability map at that size.
    """

    def __init__(self, config: SegmenterConfig | None = None, **kwargs: object) -> None:
        super().__init__()
        self.config = config or SegmenterConfig(**kwargs)  # type: ignore[arg-type]
        self.config.validate()  # again: its fields may have changed since it was made
        self.encoder = VGGEncoder(self.config.in_channels, self.config.width, self.config.depth)
        self.decoder = UNetDecoder(self.encoder.channels)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, 1)
        if self.config.padding != "zeros":  # match the padding the encoder was trained with
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    module.padding_mode = self.config.padding

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.decoder(self.encoder(x)))

    @classmethod
    def from_ld_run(cls, run_dir: str | Path, *, size: int = 512) -> Segmenter:
        """A segmenter whose encoder is that of an LD pre-training run (``encoder.safetensors``).

        ``run_dir`` may name one of the run's weight files instead, as
        :meth:`LDModel.from_pretrained` takes it (``RUN/stage1.safetensors``: the encoder at
        the end of stage 1). The run's ``config.json`` is read by :meth:`LDConfig.from_run`, as
        :meth:`LDModel.from_pretrained` reads it: the same defaults and the same errors.

        The decoder and head start from torch's global random state (seed it for the same
        ones), as any torch module does: a second call makes other ones.
        """
        from localdisc.engine.checkpoint import load_safetensors

        run_dir, weights = split_weights_path(run_dir, "encoder.safetensors")
        ld = LDConfig.from_run(run_dir)
        config = SegmenterConfig(
            modality=ld.modality, width=ld.width, padding=ld.padding, depth=ld.depth, size=size
        )
        model = cls(config)
        if weights == "encoder.safetensors":
            check_weights_file(run_dir, weights)  # an unfinished run has none yet
            state = load_safetensors(run_dir / weights)
        else:  # a whole LD model's weights (model, model_best, stage1): its encoder's part
            state = LDModel.from_pretrained(run_dir / weights).encoder.state_dict()
        load_matching_weights(model.encoder, state, run_dir / weights)
        return model

    # --- inference on raw images -------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: np.ndarray | Tensor) -> np.ndarray:
        """Probability map (``float32`` H x W) of one raw image: ``H x W (x C)`` floats in [0, 1],
        ``uint8``/``uint16`` or a ``[C, H, W]`` tensor
        (:func:`~localdisc.data.preprocess.as_raw_image`).

        The image is resized to the training size, as in training, and the probabilities are
        resized back (bilinear) to the image's own size.
        """
        return self.predict_maps(image)[1]

    @torch.no_grad()
    def predict_maps(self, image: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Probability maps of one raw image at the training size (``size x size``) and at the
        image's own size (what :meth:`predict` returns), from one forward pass in the weights'
        dtype (float32 for a model as trained; the maps are float32 whatever the dtype).

        Test evaluation (:func:`~localdisc.tasks.transfer.evaluate`) scores these very maps, so
        that ``metrics.json`` describes what ``localdisc predict`` outputs (no autocast here).
        """
        from localdisc.data.views import normalize

        image = as_raw_image(image)
        h, w = image.shape[:2]
        arr = resize_image(to_modality_channels(image, self.config.modality), self.config.size)
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        # The weights' dtype too: a model cast with .to(torch.bfloat16) takes raw float32 images.
        weight = next(self.parameters())
        x = normalize(x, self.config.modality).to(device=weight.device, dtype=weight.dtype)
        with in_mode(self, training=False):
            prob_small = torch.sigmoid(self(x).float())
        prob = F.interpolate(prob_small, size=(h, w), mode="bilinear", align_corners=False)
        return prob_small[0, 0].cpu().numpy(), prob[0, 0].clamp(0, 1).cpu().numpy()

    # --- persistence ------------------------------------------------------------------------
    def save(self, out_dir: str | Path, extra: dict | None = None) -> None:
        """Write ``model.safetensors``, then ``config.json`` (segmenter + extra, and the
        weights' SHA-256, :data:`WEIGHTS_HASH`), each atomically.

        The config is made into JSON before anything is written: a config that cannot be saved
        (a ``Path`` in ``extra``) left weights without a config, a folder that no command could
        load. A save cut between the two files (a full disk, a kill) leaves the config of
        other weights beside these, which :func:`saved_together` tells: a rerun of
        ``shape-guided vessels`` took an earlier network, under its own settings' config, for
        its own.
        """
        from localdisc.engine.checkpoint import atomic_save_safetensors, atomic_write_text, sha256

        out_dir = Path(out_dir)
        config = {**(extra or {}), "segmenter": asdict(self.config)}
        try:
            text = json.dumps(config, indent=2)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{out_dir}: the model's config is not JSON ({exc})") from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = out_dir / "model.safetensors"
        atomic_save_safetensors(self.state_dict(), weights)
        text = json.dumps({**config, WEIGHTS_HASH: sha256(weights)}, indent=2)
        atomic_write_text(out_dir / "config.json", text)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, device: str = "cpu") -> Segmenter:
        """Load a fine-tuned model (``config.json`` + ``model.safetensors``, no pickle) onto
        ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``:
        :func:`~localdisc.engine.distributed.resolve_device`; or another device torch knows).
        Building the network draws initial weights from torch's global random state, as any
        torch module does; the file's replace them."""
        from localdisc.engine.checkpoint import load_safetensors
        from localdisc.engine.distributed import resolve_device

        resolved = resolve_device(device, other=True)  # "auto"; a misspelt one named first
        model_dir = Path(model_dir)
        config = read_config(model_dir)
        raw = config.get("segmenter")
        if not isinstance(raw, dict):
            problem = f"{model_dir}/config.json: not a fine-tuned model (no segmenter)"
            if "pretrain" in config or "model" in config:  # said only the line above
                problem += (
                    f"; it is an LD pre-training run: fine-tune it first (`localdisc finetune "
                    f"--init {model_dir} ...`), or give it to `localdisc similarity`, "
                    "`localize` or `view`"
                )
            raise CheckpointError(problem)
        try:
            model = cls(SegmenterConfig(**raw))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{model_dir}/config.json: bad segmenter config ({exc})") from exc
        state = load_safetensors(model_dir / "model.safetensors")
        load_matching_weights(model, state, model_dir / "model.safetensors")
        return model.to(resolved).eval()


#: In a saved model's ``config.json``: the SHA-256 of the ``model.safetensors`` saved with it.
WEIGHTS_HASH = "weights_sha256"


def saved_together(model_dir: Path, config: dict) -> bool:
    """Whether ``model_dir/model.safetensors`` is the file :meth:`Segmenter.save` wrote with
    ``config`` (``model_dir``'s ``config.json``; folders saved before the record: taken to be).
    A command that reuses a saved model as its own asks; loading does not refuse (weights cast
    to float16 by hand load, as before)."""
    from localdisc.engine.checkpoint import sha256

    weights = model_dir / "model.safetensors"
    recorded = config.get(WEIGHTS_HASH)
    return not isinstance(recorded, str) or (weights.is_file() and sha256(weights) == recorded)


def read_config(folder: str | Path) -> dict:
    """``config.json`` of a run or model folder, as a dict; a clear error if it is not one."""
    folder = Path(folder)
    path = folder / "config.json"
    if folder.is_file() and (folder.parent / "config.json").is_file():  # a weight file given
        raise CheckpointError(
            f"{folder}: a file; give the folder that holds it and its config.json: {folder.parent}"
        )
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json (not a localdisc run or model folder)")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config
