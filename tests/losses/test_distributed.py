"""Data-parallel losses: 2 gloo processes x batch b must equal 1 process x batch 2b.

Under DDP each rank back-propagates its own returned loss and DDP then *averages* the parameter
gradients over the W ranks. Rank r's parameter gradient is J_r^T g_r, where J_r is the Jacobian
of its network outputs (the loss inputs) and g_r the gradient of its loss w.r.t. those inputs
(including whatever the collectives route to it from other ranks). So DDP applies
(1/W) sum_r J_r^T g_r, while one process on the global batch applies sum_r J_r^T G[slice_r],
with G the single-process input gradient. For these to agree for any network we need

    g_r / W == G[slice_r]        on every rank r,

which is what the test checks, together with mean_r(loss_r) == single-process loss.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from localdisc.losses import (
    hypersphere_mixup_loss,
    isl_loss,
    patch_discrimination_loss,
    region_discrimination_loss,
)

WORLD = 2
TIMEOUT_S = 90


def _unit(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=1)


def _global_inputs(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Global batches of size 2b (float64 so the comparison can be tight)."""
    gen = torch.Generator().manual_seed(seed)
    m, d, g = 3, 5, 2  # per rank: 3 pairs for ISL; 3 images / items for the others
    a = torch.sigmoid(2 * torch.randn(WORLD * m, 4, 5, 6, generator=gen, dtype=torch.float64))
    return {
        "isl": {"x": _unit(gen, 2 * WORLD * m, d)},
        "patch": {"view1": _unit(gen, WORLD * m, d, g, g), "view2": _unit(gen, WORLD * m, d, g, g)},
        "mixup": {
            "mixed": _unit(gen, WORLD * m, d, g, g),
            "patches1": _unit(gen, WORLD * m, d, g, g),
            "patches2": _unit(gen, WORLD * m, d, g, g),
            "lam": torch.rand(WORLD * m, generator=gen, dtype=torch.float64) * 0.6 + 0.2,
        },
        "region": {"v": _unit(gen, WORLD * m, d, 5, 6), "a": a / a.sum(dim=1, keepdim=True)},
    }


def _local(name: str, key: str, t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s share of a global tensor (or of its gradient)."""
    if name == "isl":
        # ISL pairs (i, i + N/2). The global batch is [first halves of all ranks ; second halves
        # of all ranks], so rank r holds [its block of the first half ; its block of the second].
        half = t.shape[0] // 2
        b = half // world
        return torch.cat([t[rank * b : (rank + 1) * b], t[half + rank * b : half + (rank + 1) * b]])
    b = t.shape[0] // world  # every other loss: contiguous blocks of images / items
    return t[rank * b : (rank + 1) * b]


LOSSES = {
    "isl": (lambda i, dist_: isl_loss(i["x"], distributed=dist_), ("x",)),
    "patch": (
        lambda i, dist_: patch_discrimination_loss(i["view1"], i["view2"], distributed=dist_),
        ("view1", "view2"),
    ),
    "mixup": (
        lambda i, dist_: hypersphere_mixup_loss(
            i["mixed"], i["patches1"], i["patches2"], i["lam"], distributed=dist_
        ),
        ("mixed",),  # the targets are stop-gradient: patches1/2 get no gradient at all
    ),
    "region": (
        lambda i, dist_: region_discrimination_loss(i["v"], i["a"], distributed=dist_),
        ("v", "a"),
    ),
}


def _loss_and_grads(name: str, inputs: dict[str, torch.Tensor], distributed: bool):
    fn, grad_keys = LOSSES[name]
    inputs = {k: (t.clone().requires_grad_() if k in grad_keys else t) for k, t in inputs.items()}
    loss = fn(inputs, distributed)
    grads = torch.autograd.grad(loss, [inputs[k] for k in grad_keys])
    return loss.detach(), dict(zip(grad_keys, grads, strict=True))


def _worker(rank: int, world: int, tmp: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        data = torch.load(Path(tmp) / "inputs.pt")
        results: dict[str, object] = {}
        for name, inputs in data.items():
            local = {k: _local(name, k, t, rank, world) for k, t in inputs.items()}
            results[name] = _loss_and_grads(name, local, distributed=True)
        # Unequal local sizes must fail loudly, on every rank, rather than hang or mislead.
        gen = torch.Generator().manual_seed(rank)
        try:
            isl_loss(_unit(gen, 4 + 2 * rank, 3), distributed=True)
            results["mismatch"] = None
        except ValueError as err:
            results["mismatch"] = str(err)
        torch.save(results, Path(tmp) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_ranks(tmp: Path) -> list[dict]:
    ctx = mp.start_processes(
        _worker, args=(WORLD, str(tmp)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:  # only our own children, and only if still running
            if p.is_alive():
                p.kill()
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> tuple[dict, list[dict]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("ddp")
    data = _global_inputs()
    torch.save(data, tmp / "inputs.pt")
    return data, _run_ranks(tmp)


@pytest.mark.timeout(TIMEOUT_S + 30)
@pytest.mark.parametrize("name", list(LOSSES))
def test_two_ranks_equal_one_process(rank_results, name):
    data, ranks = rank_results
    single_loss, single_grads = _loss_and_grads(name, data[name], distributed=False)

    rank_losses = torch.stack([ranks[r][name][0] for r in range(WORLD)])
    # Equal local sizes: the mean of the ranks' local means is the global mean.
    torch.testing.assert_close(rank_losses.mean(), single_loss, rtol=1e-12, atol=1e-12)
    for r in range(WORLD):
        for key, g_rank in ranks[r][name][1].items():
            want = _local(name, key, single_grads[key], r, WORLD)
            torch.testing.assert_close(g_rank / WORLD, want, rtol=1e-10, atol=1e-12)

    # Sensitivity: without the collectives each rank only sees its own batch, and the average
    # of those local losses is a different number. (So the equality above is not automatic.)
    local_only = torch.stack(
        [
            _loss_and_grads(
                name, {k: _local(name, k, t, r, WORLD) for k, t in data[name].items()}, False
            )[0]
            for r in range(WORLD)
        ]
    )
    assert not torch.allclose(local_only.mean(), single_loss, rtol=1e-6, atol=1e-8)


def test_unequal_local_sizes_raise_on_every_rank(rank_results):
    _, ranks = rank_results
    for r in range(WORLD):
        assert ranks[r]["mismatch"] is not None
        assert "same number of vectors" in ranks[r]["mismatch"]
