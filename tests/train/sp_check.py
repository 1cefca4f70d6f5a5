"""Run under torchrun (2 gloo ranks): STDiT forward/backward with sequence parallelism vs one process.

Writes {rank: {"out": max |diff|, "grad": max |diff|, "n_grads": count}} to the json path in argv[1]; argv[2]
(optional) is the model's temporal_pos; argv[3] "fsdp" shards the sequence-parallel model with FSDP2 first
(fully_shard per block and at the root, as train.engine=fsdp).
"""

import json
import sys

import torch
import torch.distributed as dist

from opensora_core.models import build_model
from opensora_core.models.sequence_parallel import enable_sequence_parallel


def main(path: str, temporal_pos: str | None = None, engine: str = "none") -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    kw = dict(input_size=(4, 8, 8), in_channels=4, caption_channels=16, model_max_length=8, hidden_size=32,
              depth=2, num_heads=2, class_dropout_prob=0.0, temporal_pos=temporal_pos)
    ref = build_model("STDiT-tiny", **kw)
    sp_model = build_model("STDiT-tiny", **kw)
    sp_model.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500])
    y = torch.randn(2, 1, 8, 16, generator=g)
    mask = torch.tensor([[1] * 5 + [0] * 3, [1] * 8])
    w = torch.randn(2, 8, 4, 8, 8, generator=g)

    out_ref = ref(x, t, y, mask)
    (out_ref * w).sum().backward()
    if engine == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in sp_model.blocks:
            fully_shard(block)
        fully_shard(sp_model)
    enable_sequence_parallel(sp_model, 2)
    out_sp = sp_model(x, t, y, mask)
    (out_sp * w).sum().backward()
    diffs = []
    for (name, p_ref), p_sp in zip(ref.named_parameters(), sp_model.parameters()):
        if engine == "fsdp":  # FSDP averages the ranks' partial gradients (as DDP does): the sum is 2x that
            grad = p_sp.grad.full_tensor() * 2
        else:
            grad = p_sp.grad.clone()
            dist.all_reduce(grad)  # the sp ranks' partial gradients sum to the full one
        diffs.append((grad - p_ref.grad).abs().max().item())
    result = {"out": (out_sp - out_ref).abs().max().item(), "grad": max(diffs), "n_grads": len(diffs)}
    gathered = [None, None]
    dist.all_gather_object(gathered, result)
    if rank == 0:
        with open(path, "w") as f:
            json.dump(gathered, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
