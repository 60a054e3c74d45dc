"""What 2 gloo processes train is what they should: each rank its own shard of the pool, a resume
the uninterrupted run, and the shape prior's discriminator the same on every rank.

Each test starts ranks 0 and 1 with :func:`helpers.run_two_ranks` (Python workers, which import
``localdisc`` from the same ``PYTHONPATH`` as the tests) and reads what they print or write.
"""

import json

import torch
from safetensors.torch import load_file

from helpers import run_two_ranks

# The worker's start: rank, file store and run folder from argv, a gloo group of 2, one thread
# (tiny tensors; 2 busy cores), and a pool of distinct generated images.
PREAMBLE = """
import hashlib, json, os, sys
import torch
import torch.distributed as dist
from helpers import tiny_pretrain_config
import localdisc.engine.pretrain as engine
from localdisc.data.pool import synthetic_pool

rank, store, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
torch.set_num_threads(1)
quiet = lambda message: None
"""

SHARD_RANK = (
    PREAMBLE
    + """
# The pool images each training step hands to the views (x1 and x2, as drawn), by index.
pool, drawn = synthetic_pool(4, "fundus", 48), set()

class RecordingViews(engine.LDViews):
    def __call__(self, x1, x2, generator=None):
        for image in torch.cat([x1, x2]):
            drawn.update(i for i in range(len(pool)) if torch.equal(image, pool[i]))
        return super().__call__(x1, x2, generator=generator)

engine.LDViews = RecordingViews
# no validation images (validation would hand rank 0 other images), 4 training images: a shard
# of 2 on each rank, both drawn at every step (2 images a step)
config = tiny_pretrain_config(stage1_steps=2, stage2_steps=1, val_images=0, checkpoint_every=100)
try:
    engine.pretrain(config, run_dir, pool=pool, log=quiet)
    print(json.dumps(sorted(drawn)))
finally:
    dist.destroy_process_group()
"""
)


def test_under_torchrun_each_rank_trains_on_its_own_share_of_the_pool(tmp_path):
    # Guards the sharding of the training pool (train_pool[rank::world_size]): with every rank on
    # rank 0's shard, 2 processes trained on half the pool, twice, and nothing else showed it.
    outputs = run_two_ranks(tmp_path, SHARD_RANK)
    drawn = []
    for out, err in outputs:
        assert out.strip(), err[-3000:]
        drawn.append(set(json.loads(out.strip().splitlines()[-1])))
    assert drawn[0] and drawn[1], drawn
    assert not drawn[0] & drawn[1], f"both ranks drew pool images {drawn[0] & drawn[1]}"
    assert drawn[0] | drawn[1] == {0, 1, 2, 3}, drawn


RESUME_RANK = (
    PREAMBLE
    + """
# 3 + 3 steps, a checkpoint every 2: uninterrupted into run/straight; into run/resumed stopped
# after step 3 (its last checkpoint at step 2), then resumed to the end.
config = tiny_pretrain_config()
pool = synthetic_pool(6, "fundus", 48)
try:
    engine.pretrain(config, f"{run_dir}/straight", pool=pool, log=quiet)
    engine.pretrain(config, f"{run_dir}/resumed", pool=pool, log=quiet, stop_at_step=3)
    result = engine.pretrain(config, f"{run_dir}/resumed", pool=pool, log=quiet, resume=True)
    print("steps", result.steps)
finally:
    dist.destroy_process_group()
"""
)


def test_under_torchrun_a_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    # Guards the checkpoint's per-rank sampler RNG states (every rank's, gathered to rank 0) and
    # their restore on each rank: with rank 0's state saved for all, rank 1 resumed with other
    # views, and the resumed 2-process model differed from the uninterrupted one.
    outputs = run_two_ranks(tmp_path, RESUME_RANK)
    assert [out.strip() for out, _ in outputs] == ["steps 6"] * 2, [e[-3000:] for _, e in outputs]
    straight = load_file(tmp_path / "run" / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "run" / "resumed" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differing, f"{len(differing)} of {len(straight)} tensors differ: {differing[:5]}"


PRIOR_RANK = (
    PREAMBLE
    + """
# The shape prior's discriminator of this rank: a digest of its weights (its parameters: the
# batch norms' running statistics are each rank's own, as its batches) before and after.
priors = []

class RecordedPrior(engine.AdversarialPrior):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        priors.append(self)
        self.initial = self.digest()

    def digest(self):
        weights = dict(self.discriminator.named_parameters())
        data = b"".join(weights[k].detach().cpu().numpy().tobytes() for k in sorted(weights))
        return hashlib.sha256(data).hexdigest()

engine.AdversarialPrior = RecordedPrior
# the discriminator steps in stage 2 only
config = tiny_pretrain_config(stage1_steps=1, stage2_steps=3, prior="simulated:vessels",
                              prior_count=4, checkpoint_every=100, val_every=100)
try:
    engine.pretrain(config, run_dir, pool=synthetic_pool(6, "fundus", 48), log=quiet)
    (prior,) = priors
    print(prior.initial, prior.digest())
finally:
    dist.destroy_process_group()
"""
)


def test_under_torchrun_the_shape_priors_discriminator_stays_the_same_on_every_rank(tmp_path):
    # Guards the hand-written gradient all-reduce of the discriminator (it is not wrapped in
    # DDP): without it each rank stepped it on its own batch, the ranks' discriminators drifted
    # apart, and the checkpoint kept rank 0's only.
    outputs = run_two_ranks(tmp_path, PRIOR_RANK)
    digests = []
    for out, err in outputs:
        assert out.strip(), err[-3000:]
        digests.append(out.strip().splitlines()[-1].split())
    (initial0, final0), (initial1, final1) = digests
    assert initial0 == initial1  # the same seeded start on both ranks
    assert final0 != initial0  # it trained
    assert final0 == final1, "the ranks' discriminators differ after training"
