"""Images/s and peak memory of one LD stage-2 training step: localdisc vs a naive reference.

Both run the same network and the same losses on the same device, data pipeline included:

* ``localdisc``: the engine's step: pool in device memory, views built on the device in one
  batched pass, channels-last, bf16 autocast where it pays (CUDA, CPUs with bf16 instructions:
  ``localdisc.engine.precision``), region embeddings as a batched matrix product, and the
  engine's finite-loss check (one wait for the device per step).
* ``localdisc-fp32``: the same step in float32 and contiguous memory (the engine on CPU before
  bf16 and channels-last came to it; ``pretrain --no-amp`` still trains in float32).
* ``naive``: what a direct port of the published pipeline does: views built on the CPU item by
  item and copied over, fp32, region embeddings through the ``[N, K, D, H, W]`` broadcast.

Each variant runs in its own subprocess so that peak memory (CUDA allocator peak, or the process's
peak RSS on CPU) is its own. The last line reads ``ratio: X.XX`` (localdisc / naive images/s).

    python benchmarks/pretrain_throughput.py --device cpu --batch 1 --size 128
    python benchmarks/pretrain_throughput.py --device cpu --batch 2 --size 128 \
        --variants localdisc-fp32,localdisc
    python benchmarks/pretrain_throughput.py --device cuda --batch 4 --size 448
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def naive_region_loss(v: torch.Tensor, a: torch.Tensor, tau: float) -> torch.Tensor:
    """Region discrimination with z from the 5-D broadcast product (the memory hog)."""
    z = F.normalize((a[:, :, None] * v[:, None]).sum((-1, -2)), dim=-1)  # [N, K, D]
    c = F.normalize(z.mean(0), dim=-1)
    logits = torch.einsum("nkd,jd->nkj", z, c) / tau
    target = torch.arange(a.shape[1], device=a.device).expand(a.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def run_one(
    variant: str,
    device: str,
    batch: int,
    size: int,
    steps: int,
    warmup: int,
    compile_model: bool,
    profile: bool = False,
    depth: int = 5,
    width: int = 16,
) -> dict:
    from localdisc.data.views import LDViews, host_to_device, undo_view2
    from localdisc.engine.pretrain import PretrainConfig, ld_losses
    from localdisc.engine.stop import GracefulStop
    from localdisc.losses import (
        entropy_loss,
        hypersphere_mixup_loss,
        patch_discrimination_loss,
        patch_embeddings,
    )
    from localdisc.models.ld import LDModel

    dev = torch.device(device)
    torch.manual_seed(0)
    fast = variant.startswith("localdisc")
    fp32 = variant == "localdisc-fp32"
    config = PretrainConfig(
        data=["-"], batch=batch, size=size, stage1_steps=0, stage2_steps=1, depth=depth,
        width=width, amp=not fp32,
    )  # fmt: skip
    pool_size = config.resolved_pool_size
    pool = torch.randint(0, 256, (64, 3, pool_size, pool_size), dtype=torch.uint8)
    model = LDModel(depth=depth, width=width).to(dev)
    views = LDViews(size)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    if fast:
        pool = pool.to(dev)
        if not fp32:
            model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model and fast else model
    stopper = GracefulStop()  # only for its finite-loss check (no signal handlers installed)

    def step() -> None:
        idx = torch.randint(pool.shape[0], (2 * batch,), generator=gen)
        if fast:
            x = pool[host_to_device(idx, dev)]  # as the engine copies them
            vb = views(x[:batch], x[batch:], generator=gen)
            if not fp32:
                vb.images = vb.images.contiguous(memory_format=torch.channels_last)
            loss = ld_losses(net, vb, 2, config).total
        else:
            # Item by item on the CPU, as a per-sample Dataset + DataLoader would, then copy.
            parts = [
                views(pool[idx[i : i + 1]], pool[idx[batch + i : batch + i + 1]], generator=gen)
                for i in range(batch)
            ]
            images = torch.cat([p.images.view(5, 1, *p.images.shape[1:]) for p in parts], 1)
            images = images.flatten(0, 1).to(dev)
            lam = torch.cat([p.lam for p in parts]).to(dev)
            flip = torch.stack([p.flip for p in parts], 1).flatten().to(dev)
            rot_k = torch.stack([p.rot_k for p in parts], 1).flatten().to(dev)
            v, a = model(images)
            p = patch_embeddings(v, 8)
            b = batch
            v1, v2 = p[: 2 * b], undo_view2(p[2 * b : 4 * b], flip, rot_k)
            loss = patch_discrimination_loss(v1, v2) + hypersphere_mixup_loss(
                p[4 * b :], v1[:b], v1[b:], lam
            )
            loss = loss + 10 * naive_region_loss(v[: 4 * b], a[: 4 * b], 0.2)
            loss = loss + 0.1 * entropy_loss(a[: 4 * b])
        opt.zero_grad(set_to_none=True)
        # The engine's per-step check that the loss is finite (a wait for the device), which
        # skips the update if not: localdisc's step is the engine's. A direct port has none.
        if fast and not stopper.agree(torch.isfinite(loss.detach()).float())[0]:
            return
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    table = ""
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if dev.type == "cuda" else []
        )
        with torch_profile(activities=activities) as prof:
            for _ in range(5):
                step()
            sync()
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=25)
    return {
        "profile": table,
        "variant": variant,
        "images_per_s": steps * 5 * batch / elapsed,
        "step_s": elapsed / steps,
        "peak_gib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile localdisc's model")
    parser.add_argument("--variants", default="localdisc,naive")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    parser.add_argument("--depth", type=int, default=5, help="encoder blocks (the demo's: 2)")
    parser.add_argument("--width", type=int, default=16, help="first block's channels (demo: 8)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = run_one(
            args.one,
            args.device,
            args.batch,
            args.size,
            args.steps,
            args.warmup,
            args.compile,
            args.profile,
            args.depth,
            args.width,
        )
        print(json.dumps(result))
        return
    results = {}
    for variant in args.variants.split(","):
        cmd = (
            [sys.executable, __file__, "--one", variant]
            + [
                f"--{k}={getattr(args, k)}"
                for k in ("device", "batch", "size", "steps", "warmup", "depth", "width")
            ]
            + (["--compile"] if args.compile else [])
            + (["--profile"] if args.profile else [])
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results[variant] = None
            continue
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"device: {name}, batch {args.batch} ({5 * args.batch} images/step), size {args.size}, "
        f"depth {args.depth}, width {args.width}"
    )
    print(f"{'variant':<14} {'images/s':>10} {'step (ms)':>10} {'peak (GiB)':>11}")
    for variant, r in results.items():
        if r is None:
            print(f"{variant:<14} {'failed':>10}")
        else:
            print(
                f"{variant:<14} {r['images_per_s']:>10.1f} {1000 * r['step_s']:>10.1f} "
                f"{r['peak_gib']:>11.2f}"
            )
    for variant, r in results.items():
        if r and r["profile"]:
            print(f"\nprofile of {variant} (5 steps):\n{r['profile']}")
    fast, naive = results.get("localdisc"), results.get("naive")
    if fast and naive:
        print(f"ratio: {fast['images_per_s'] / naive['images_per_s']:.2f}")
    fp32 = results.get("localdisc-fp32")
    if fast and fp32:
        print(f"ratio to float32: {fast['images_per_s'] / fp32['images_per_s']:.2f}")


if __name__ == "__main__":
    main()
