"""XL/2 on a GPU: a bf16 training step at the 16x256 latent size (skipped without CUDA)."""

import pytest
import torch

from opensora_core.models import build_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("name", ["STDiT-XL/2", "DiT-XL/2"])
def test_xl2_training_step_in_bf16_on_cuda(name):
    model = build_model(name, grad_checkpoint=True).cuda().train()
    x = torch.randn(1, 4, 16, 32, 32, device="cuda")
    y = torch.randn(1, 1, 120, 4096, device="cuda")
    mask = torch.zeros(1, 120, dtype=torch.long, device="cuda")
    mask[:, :17] = 1
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, torch.tensor([500], device="cuda"), y, mask)
    assert out.shape == (1, 8, 16, 32, 32) and out.dtype == torch.float32
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
