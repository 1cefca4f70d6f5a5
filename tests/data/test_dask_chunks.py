"""The chunking rule of the Dask data steps (opensora_core/data/dask_chunks.py): fast, no cluster."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 31, 100, 1001])
@pytest.mark.parametrize("slots,per_slot", [(1, 1), (1, 4), (2, 4), (3, 2), (16, 4)])
def test_chunks_cover_every_item_exactly_once_in_order(n, slots, per_slot):
    from opensora_core.data.dask_chunks import chunk_ranges

    chunks = chunk_ranges(n, slots, per_slot)
    assert [i for r in chunks for i in r] == list(range(n))
    assert all(len(r) for r in chunks)  # no empty chunk is submitted
    assert len(chunks) == min(n, slots * per_slot)
    assert max(map(len, chunks), default=0) - min(map(len, chunks), default=0) <= 1  # near-equal: balanced workers


def test_a_shard_joined_from_pieces_is_the_shard_written_whole(tmp_path):
    import torch
    from safetensors.torch import save_file

    from opensora_core.data.dask_chunks import merge_pieces

    g = torch.Generator().manual_seed(0)
    whole = {"latent": torch.randn(5, 4, 2, 4, 4, generator=g), "y": torch.randn(5, 1, 8, 16, generator=g),
             "mask": torch.ones(5, 8, dtype=torch.long), "index": torch.arange(5)}
    save_file(whole, str(tmp_path / "whole.safetensors"))
    parts = []
    for k, (a, b) in enumerate([(0, 2), (2, 4), (4, 5)]):
        parts.append(tmp_path / f"shard.{k}.part")
        save_file({key: t[a:b].contiguous() for key, t in whole.items()}, str(parts[-1]))
    merge_pieces(parts, tmp_path / "joined.safetensors")
    assert (tmp_path / "joined.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    assert not any(p.exists() for p in parts)
