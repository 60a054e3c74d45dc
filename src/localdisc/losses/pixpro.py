"""PixPro: pixel-to-propagation consistency between two views (no negatives).

Z. Xie, Y. Lin, Z. Zhang, Y. Cao, S. Lin, H. Hu, "Propagate Yourself: Exploring Pixel-Level
Consistency for Unsupervised Visual Representation Learning", CVPR 2021, Sec. 3.

- Positive pairs (Sec. 3.1, Eq. 1): every feature cell ("pixel") of both views is warped to the
  ORIGINAL image, the distances between all pairs of cells of the two views are computed there,
  normalised by the diagonal length of a feature-map bin, and pairs closer than ``T = 0.7`` are
  positives. The two views' bins differ in size (different crop scales); we normalise by the
  larger of the two diagonals, so that a pair is positive when their distance is below 0.7 of the
  coarser view's bin (the paper speaks of "a feature map bin" without saying which; this choice
  is our reading and is the one symmetric in the two views). With our geometry (crop, flips and
  rotations composed in one affine map, see :class:`localdisc.data.views.LDViews`) a bin maps to
  a parallelogram with edge vectors ``e1, e2``; its "diagonal" is ``sqrt(|e1|^2 + |e2|^2)``, the
  diagonal of the bin for rectangular bins and the root mean square of its two diagonals
  otherwise.
- Pixel-to-propagation consistency (Sec. 3.3, Eq. 5): with ``y`` the PPM output of the regular
  encoder and ``x'`` the momentum encoder's projected features,
  ``L = -cos(y_i, x'_j) - cos(y_j, x'_i)`` for each positive pair ``(i, j)`` (``i`` in view 1,
  ``j`` in view 2), averaged over the positive pairs of each image and then over the images of
  the batch. An image pair without any positive pair contributes 0 (and still counts in the batch
  mean).

The propagation module itself is :class:`localdisc.models.projection.PixelPropagation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "feature_cell_geometry",
    "pixpro_consistency_loss",
    "pixpro_positive_mask",
]

#: The paper's distance threshold, in bin diagonals.
THRESHOLD = 0.7


def feature_cell_geometry(
    theta: Tensor, grid_hw: tuple[int, int], image_hw: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Where the cells of a view's feature grid lie in the original image, and their size.

    Args:
        theta: ``[N, 2, 3]`` affine maps of the views in ``F.affine_grid`` convention (output
            normalised coordinates -> input normalised coordinates, ``align_corners=False``), as
            drawn by :class:`localdisc.methods.base.PeerViews`.
        grid_hw: ``(h, w)`` cells of the feature grid; cell ``(a, b)`` covers the output pixels
            ``[a S/h, (a+1) S/h) x [b S/w, (b+1) S/w)`` of the ``S x S`` view.
        image_hw: ``(H, W)`` of the original (pool) image.

    Returns:
        ``centres``: ``[N, h*w, 2]`` cell centres as ``(x, y)`` in original-image pixel units
        (0 at the left/top edge, ``W``/``H`` at the right/bottom edge), raster order over cells;
        ``diagonal``: ``[N]`` bin diagonal ``sqrt(|e1|^2 + |e2|^2)`` in the same units.
    """
    if theta.dim() != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"theta must be [N, 2, 3], got {tuple(theta.shape)}")
    h, w = grid_hw
    height, width = image_hw
    dtype = torch.promote_types(theta.dtype, torch.float32)
    theta = theta.to(dtype)
    v = (2 * torch.arange(h, dtype=dtype, device=theta.device) + 1) / h - 1
    u = (2 * torch.arange(w, dtype=dtype, device=theta.device) + 1) / w - 1
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    pts = torch.stack([uu.reshape(-1), vv.reshape(-1)], -1)  # [hw, 2] as (x, y)
    lin, shift = theta[:, :, :2], theta[:, :, 2]
    norm = pts @ lin.transpose(1, 2) + shift[:, None, :]  # [N, hw, 2]
    to_pixels = torch.tensor([width / 2, height / 2], dtype=dtype, device=theta.device)
    centres = (norm + 1) * to_pixels
    e1 = lin[:, :, 0] * (2 / w) * to_pixels  # one bin step along the output x axis
    e2 = lin[:, :, 1] * (2 / h) * to_pixels
    diagonal = torch.sqrt((e1**2).sum(-1) + (e2**2).sum(-1))
    return centres, diagonal


def pixpro_positive_mask(
    theta1: Tensor,
    theta2: Tensor,
    grid_hw: tuple[int, int],
    image_hw: tuple[int, int],
    threshold: float = THRESHOLD,
) -> Tensor:
    """Positive pairs between the cells of two views of the same images (PixPro Eq. 1).

    Returns:
        ``[N, h*w, h*w]`` bool: ``mask[n, i, j]`` when cell ``i`` of view 1 and cell ``j`` of view
        2 lie closer than ``threshold`` times ``max(diag1, diag2)`` in the original image, both
        centres inside it: the peers' views (rotated, cropped past the edge) put some cells in
        the padding, and two such cells would pair by distance though neither shows the image
        (the paper's crops stay inside it; 1.2 % of the positives at ``--cpu-scale``,
        benchmarks/pixpro_padding_positives.py).
    """
    height, width = image_hw
    c1, d1 = feature_cell_geometry(theta1, grid_hw, image_hw)
    c2, d2 = feature_cell_geometry(theta2, grid_hw, image_hw)
    dist = torch.cdist(c1, c2)  # [N, hw, hw]

    def inside(c: Tensor) -> Tensor:
        x, y = c[..., 0], c[..., 1]
        return (x >= 0) & (x <= width) & (y >= 0) & (y <= height)

    near = dist < threshold * torch.maximum(d1, d2)[:, None, None]
    return near & inside(c1)[:, :, None] & inside(c2)[:, None, :]


def pixpro_consistency_loss(y1: Tensor, k2: Tensor, y2: Tensor, k1: Tensor, mask: Tensor) -> Tensor:
    """Symmetric pixel-to-propagation consistency (PixPro Eq. 5).

    Args:
        y1, y2: ``[N, D, h, w]`` PPM outputs of views 1 and 2 (regular encoder; gradient flows).
        k1, k2: ``[N, D, h, w]`` projected features of views 1 and 2 from the momentum encoder
            (detached here).
        mask: ``[N, h*w, h*w]`` positives, cell ``i`` of view 1 by cell ``j`` of view 2.

    Returns:
        ``mean_n (1/|P_n|) sum_{(i,j) in P_n} [-cos(y1_i, k2_j) - cos(y2_j, k1_i)]``, 0 for images
        without positives. Range [-2, 2].
    """
    n, d = y1.shape[:2]
    hw = y1.shape[2] * y1.shape[3]
    if mask.shape != (n, hw, hw):
        raise ValueError(f"mask must be [{n}, {hw}, {hw}], got {tuple(mask.shape)}")
    with torch.autocast(device_type=y1.device.type, enabled=False):

        def unit(x: Tensor) -> Tensor:
            return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)).flatten(2), dim=1)

        cos12 = torch.bmm(unit(y1).transpose(1, 2), unit(k2.detach()))  # [N, i, j]
        cos21 = torch.bmm(unit(k1.detach()).transpose(1, 2), unit(y2))  # [N, i, j]: y2_j . k1_i
        m = mask.to(cos12.dtype)
        per_image = ((cos12 + cos21) * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1.0)
        return -per_image.mean()
