import torch

from localdisc.data.views import normalize
from localdisc.engine.batch_norm import recalibrate_batch_norm
from localdisc.models.segmenter import Segmenter


def test_recalibrated_batch_norm_holds_the_images_statistics():
    torch.manual_seed(0)
    network = Segmenter(modality="xray", width=4, depth=2, size=16).eval()
    weights = {k: v.clone() for k, v in network.named_parameters()}
    images = torch.rand(6, 1, 16, 16) * 0.5 + 0.25
    recalibrate_batch_norm(network, images, batch=6)
    assert not network.training
    first, norm = network.encoder.blocks[0][0][:2]  # the first conv and its batch norm
    with torch.no_grad():
        features = first(normalize(images, "xray"))
    torch.testing.assert_close(norm.running_mean, features.mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_var, features.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert norm.momentum == 0.1  # restored for later training
    for name, value in network.named_parameters():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)


def test_recalibration_pools_the_batches_and_keeps_training_mode():
    torch.manual_seed(1)
    network = Segmenter(modality="xray", width=4, depth=2, size=16).train()
    images = torch.rand(6, 1, 16, 16)
    recalibrate_batch_norm(network, images, batch=2)
    assert network.training
    first, norm = network.encoder.blocks[0][0][:2]
    with torch.no_grad():
        features = first(normalize(images, "xray"))
    # Three batches of 2: pooled, their statistics are those of all six.
    torch.testing.assert_close(norm.running_mean, features.mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_var, features.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert int(norm.num_batches_tracked) == 3


def test_a_short_last_batch_weighs_by_its_images():
    # Batches of 8, 8 and 4 (DRIVE's 20 training images at the default batch): the running
    # statistics are those of all 20 images, not an average of 3 batches weighing equally.
    torch.manual_seed(2)
    network = Segmenter(modality="xray", width=4, depth=2, size=16).eval()
    images = torch.rand(20, 1, 16, 16) * torch.linspace(0.1, 1, 20).view(20, 1, 1, 1)
    recalibrate_batch_norm(network, images, batch=8)
    first, norm = network.encoder.blocks[0][0][:2]
    with torch.no_grad():
        features = first(normalize(images, "xray"))
    torch.testing.assert_close(norm.running_mean, features.mean((0, 2, 3)))
    torch.testing.assert_close(norm.running_var, features.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert int(norm.num_batches_tracked) == 3
    assert all(m.momentum == 0.1 for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
