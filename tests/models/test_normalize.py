import torch
import torch.nn.functional as F

from localdisc.models.normalize import l2_normalize


def test_matches_f_normalize_in_value_and_gradient():
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    (ga,) = torch.autograd.grad((l2_normalize(x) * w).sum(), x)
    (gb,) = torch.autograd.grad((F.normalize(x, dim=1) * w).sum(), x)
    torch.testing.assert_close(l2_normalize(x), F.normalize(x, dim=1))
    torch.testing.assert_close(ga, gb)
    assert torch.autograd.gradcheck(lambda t: l2_normalize(t, 1), (x,))
