import pytest
import torch

from training.config import CapsNetConfig, variant_config
from training.model import CapsNet, capsule_length, count_parameters, dynamic_routing, squash


def test_paper_parameter_counts():
    model = CapsNet(CapsNetConfig())
    assert count_parameters(model) == 8_215_568
    assert count_parameters(model, include_decoder=False) == 6_804_224
    assert model.config.num_primary == 1152


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes_paper(batch):
    model = CapsNet(CapsNetConfig()).eval()
    x = torch.rand(batch, 1, 28, 28)
    with torch.no_grad():
        probs, poses = model(x)
        _, coupling = model.encode(x)
        recon = model.reconstruct(poses)
        masked = model.decode(poses, torch.zeros(batch, dtype=torch.long))
    assert probs.shape == (batch, 10)
    assert poses.shape == (batch, 10, 16)
    assert coupling.shape == (batch, 1152, 10)
    assert recon.shape == masked.shape == (batch, 1, 28, 28)
    assert torch.all((probs >= 0) & (probs < 1))


def test_coupling_sums_to_one_over_parents():
    torch.manual_seed(0)
    model = CapsNet(variant_config("small")).eval()
    with torch.no_grad():
        _, c = model.encode(torch.rand(4, 1, 28, 28))  # [B, N_in, N_out]
    torch.testing.assert_close(c.sum(dim=2), torch.ones(4, c.shape[1]))
    # Summing over the children instead must not give 1: the axes are not interchangeable.
    assert not torch.allclose(c.sum(dim=1), torch.ones(4, c.shape[2]))


def reference_routing(u_hat: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedure 1 of the paper written with explicit loops over capsules (slow, obviously right).
    u_hat: [B, N_in, N_out, D_out]."""
    bsz, n_in, n_out, _ = u_hat.shape
    b = torch.zeros(bsz, n_in, n_out, dtype=torch.float64)
    u_hat = u_hat.double()
    for _ in range(iters):
        c = torch.exp(b) / torch.exp(b).sum(dim=2, keepdim=True)  # softmax over parents j
        v = torch.zeros(bsz, n_out, u_hat.shape[3], dtype=torch.float64)
        for j in range(n_out):
            s = sum(c[:, i, j, None] * u_hat[:, i, j] for i in range(n_in))
            norm = s.norm(dim=1, keepdim=True)
            v[:, j] = norm**2 / (1 + norm**2) * s / norm
        for i in range(n_in):
            for j in range(n_out):
                b[:, i, j] += (u_hat[:, i, j] * v[:, j]).sum(dim=1)
    return v, c


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_routing_matches_explicit_loops(iters):
    torch.manual_seed(1)
    u_hat = torch.randn(2, 12, 5, 4)  # [B, N_in, N_out, D_out]
    v, c = dynamic_routing(u_hat, iters)
    v_ref, c_ref = reference_routing(u_hat, iters)
    torch.testing.assert_close(v.double(), v_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.transpose(1, 2).double(), c_ref, rtol=1e-5, atol=1e-6)


def test_routing_gradient_matches_explicit_loops():
    torch.manual_seed(6)
    u_hat = torch.randn(2, 12, 5, 4, dtype=torch.float64)
    ours = u_hat.clone().requires_grad_(True)
    ref = u_hat.clone().requires_grad_(True)
    weights = torch.randn(2, 5, 4, dtype=torch.float64)
    (dynamic_routing(ours, 3)[0] * weights).sum().backward()
    (reference_routing(ref, 3)[0] * weights).sum().backward()
    torch.testing.assert_close(ours.grad, ref.grad)


def test_images_in_a_batch_do_not_interact():
    torch.manual_seed(2)
    model = CapsNet(variant_config("tiny")).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        batched = model(x)
        single = [model(x[k:k + 1]) for k in range(5)]
    for out_b, out_s in zip(batched, zip(*single, strict=True), strict=True):
        torch.testing.assert_close(out_b, torch.cat(out_s), rtol=1e-5, atol=1e-6)


def test_squash_zero_is_finite_zero_with_finite_gradient():
    s = torch.zeros(3, 10, 16, requires_grad=True)
    v = squash(s)
    assert torch.equal(v, torch.zeros_like(v))
    v.sum().backward()
    assert torch.isfinite(s.grad).all()
    length = capsule_length(torch.zeros(2, 16, requires_grad=True))
    assert torch.isfinite(length).all()


def test_squash_keeps_direction_and_bounds_length():
    s = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # lengths 5 and 0.5
    v = squash(s)
    expected = torch.tensor([25 / 26, 0.25 / 1.25])
    torch.testing.assert_close(v.norm(dim=1), expected)
    torch.testing.assert_close(v / v.norm(dim=1, keepdim=True), s / s.norm(dim=1, keepdim=True))


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(3)
    model = CapsNet(variant_config("tiny"))
    x = torch.rand(4, 1, 28, 28)
    probs, poses = model(x)
    loss = probs.sum() + model.decode(poses, torch.tensor([0, 1, 2, 3])).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def check_device_and_bf16(variant: str, device: str) -> None:
    """float32 on `device` matches the CPU; bf16 autocast on `device` runs, stays finite and close."""
    torch.manual_seed(4)
    model = CapsNet(variant_config(variant)).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        ref, _ = model(x)
        model, xd = model.to(device), x.to(device)
        probs32, _ = model(xd)
        with torch.autocast(device, dtype=torch.bfloat16):
            probs, poses = model(xd)
    torch.testing.assert_close(probs32.cpu(), ref, rtol=1e-3, atol=1e-4)
    assert probs.shape == (3, 10) and poses.shape == (3, 10, model.config.digit_dim)
    assert torch.isfinite(probs.float()).all()
    torch.testing.assert_close(probs.float().cpu(), ref, rtol=0.05, atol=0.02)


def test_bf16_autocast_runs_and_stays_close():
    check_device_and_bf16("tiny", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_cuda_float32_and_bf16_match_cpu():
    check_device_and_bf16("small", "cuda")


def test_variants_share_code_and_differ_in_width():
    tiny, small = variant_config("tiny"), variant_config("small")
    assert tiny.conv1_channels < small.conv1_channels < CapsNetConfig().conv1_channels
    assert variant_config("paper", routing_iters=2).routing_iters == 2
    with pytest.raises(ValueError, match="unknown model variant"):
        variant_config("huge")
    assert CapsNetConfig.from_dict(small.to_dict()) == small
