"""A tiny STDiT can learn: it overfits one small batch with a plain epsilon-prediction MSE loss."""

import math

import torch

from opensora_core.models import build_model


def test_tiny_stdit_overfits_one_batch_on_cpu():
    torch.manual_seed(0)
    model = build_model("STDiT-tiny", hidden_size=64, depth=2, num_heads=4, in_channels=4, caption_channels=16,
                        model_max_length=8, input_size=(2, 8, 8), class_dropout_prob=0.0)
    x0 = torch.randn(2, 4, 2, 8, 8)
    y = torch.randn(2, 1, 8, 16)
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    # linear beta schedule (1e-4..0.02 over 1000 steps); fixed noise and timesteps: memorise one batch
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0).float()
    t = torch.tensor([100, 600])
    noise = torch.randn_like(x0)
    a = alpha_bar[t].view(-1, 1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise

    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(120):
        eps = model(xt, t, y, mask)[:, :4]
        loss = torch.nn.functional.mse_loss(eps, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1])
    assert min(losses[-5:]) < losses[0] / 5, (losses[0], losses[-5:])
    print(f"loss {losses[0]:.4f} -> {min(losses[-5:]):.4f}")
