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


def test_second_derivatives_match_f_normalize():
    # The saved norm was a constant to autograd: a create_graph backward missed its dependence
    # on x and gave wrong second derivatives (gradgradcheck failed), silently.
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: l2_normalize(t, 1), (x,))
    hessian_vectors = []
    for normalise in (l2_normalize, lambda t: F.normalize(t, dim=1)):
        # x ** 3 gives the gradient a graph even where dy does not need one.
        (g,) = torch.autograd.grad((normalise(x) * w).sum() + (x**3).sum(), x, create_graph=True)
        hessian_vectors.append(torch.autograd.grad((g**2).sum(), x)[0])
    torch.testing.assert_close(*hessian_vectors)


def test_a_zero_vector_maps_to_zero_as_f_normalize_does():
    # The norm is clamped to eps (the docstring's max(|x|, eps)): a pixel whose embedding is all
    # zeros (a dead ReLU, zero padding) gave 0 / 0 = NaN, which then spread through the loss.
    x = torch.zeros(1, 3, 2, 2, requires_grad=True)
    with torch.no_grad():
        x[0, :, 0, 0] = torch.tensor([3.0, 0.0, 4.0])
    y = l2_normalize(x, dim=1)
    torch.testing.assert_close(y, F.normalize(x, dim=1), rtol=0, atol=0)
    assert y[0, :, 1, 1].tolist() == [0.0, 0.0, 0.0]
    (grad,) = torch.autograd.grad(y.sum(), x)
    (want,) = torch.autograd.grad(F.normalize(x, dim=1).sum(), x)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, want)
