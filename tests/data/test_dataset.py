"""VideoDataset (exact frame-stride sampling, ranges, shapes, bad files) and the resumable sampler."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from opensora_core.data.dataset import ResumableDistributedSampler, VideoDataset


def _manifest(paths, **cols):
    n = len(paths)
    base = {"path": [str(p) for p in paths], "text": [f"clip {i}" for i in range(n)], "num_frames": [32] * n,
            "fps": [8.0] * n, "height": [32] * n, "width": [32] * n}
    return pd.DataFrame({**base, **cols})


@pytest.fixture(scope="module")
def counter(tmp_path_factory, make_counter_video):
    return make_counter_video(tmp_path_factory.mktemp("v") / "counter.mp4")


def test_frame_stride_samples_the_exact_frame_indices(counter, frame_index_of):
    ds = VideoDataset(_manifest([counter]), num_frames=4, frame_interval=3, image_size=16, split=None)
    assert frame_index_of(ds[0]["video"]) == [0, 3, 6, 9]
    ds = VideoDataset(_manifest([counter]), num_frames=16, frame_interval=2, image_size=16, split=None)
    assert frame_index_of(ds[0]["video"]) == list(range(0, 32, 2))


def test_seeded_random_window_keeps_the_stride_and_is_reproducible(counter, frame_index_of):
    make = lambda seed: VideoDataset(_manifest([counter]), 4, 3, 16, split=None, seed=seed)  # noqa: E731
    starts = set()
    for epoch in range(8):
        ds = make(5)
        ds.set_epoch(epoch)
        idx = frame_index_of(ds[0]["video"])
        assert [b - a for a, b in zip(idx, idx[1:])] == [3, 3, 3] and idx[-1] <= 31
        ds2 = make(5)
        ds2.set_epoch(epoch)
        assert frame_index_of(ds2[0]["video"]) == idx
        starts.add(idx[0])
    assert len(starts) > 1


def test_clip_range_starts_at_its_start_time(counter, frame_index_of):
    ds = VideoDataset(_manifest([counter], start=[1.0], end=[3.0]), 4, 2, 16, split=None)
    assert frame_index_of(ds[0]["video"]) == [8, 10, 12, 14]  # 8 fps: 1.0 s is frame 8


def test_short_clip_repeats_its_last_frame(counter, frame_index_of):
    ds = VideoDataset(_manifest([counter], start=[0.0], end=[0.5]), 4, 3, 16, split=None)
    assert frame_index_of(ds[0]["video"]) == [0, 3, 3, 3]


def test_real_clips_give_cropped_videos_in_range(shared_data):
    paths = [shared_data / "bigbuckbunny.mp4", shared_data / "carphone_pristine.mp4"]
    ds = VideoDataset(_manifest(paths), num_frames=4, frame_interval=3, image_size=32, split=None)
    for i in range(2):
        item = ds[i]
        v = item["video"]
        assert v.shape == (3, 4, 32, 32) and v.dtype == torch.float32
        assert -1.0 <= float(v.min()) < float(v.max()) <= 1.0 and item["index"] == i
        assert v.std() > 0.05  # real content, not a constant frame


def test_split_filter_keeps_only_that_split(counter):
    df = _manifest([counter, counter, counter], split=["train", "val", "train"])
    assert [VideoDataset(df, 2, 1, 16, split="train")[i]["index"] for i in range(2)] == [0, 2]
    assert len(VideoDataset(df, 2, 1, 16, split="val")) == 1


def test_unreadable_clip_is_skipped_with_a_count(counter, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    ds = VideoDataset(_manifest([empty, counter]), 2, 1, 16, split=None)
    item = ds[0]
    assert item["index"] == 1 and ds.num_errors == 1


def test_image_rows_become_still_clips(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "a.png")
    v = VideoDataset(_manifest([tmp_path / "a.png"]), 3, 1, 16, split=None)[0]["video"]
    assert v.shape == (3, 3, 16, 16) and float(v[0].mean()) > 0.5 and float(v[1].mean()) < -0.9


def test_ranks_get_disjoint_shards_covering_the_dataset():
    data = list(range(10))
    shards = [list(ResumableDistributedSampler(data, 2, r, shuffle=True, seed=3)) for r in range(2)]
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(data)


def test_resumed_sampler_continues_with_exactly_the_next_samples():
    data = list(range(23))
    full = ResumableDistributedSampler(data, 2, 1, shuffle=True, seed=7)
    full.set_epoch(3)
    expected = list(full)
    killed = ResumableDistributedSampler(data, 2, 1, shuffle=True, seed=7)
    killed.set_epoch(3)
    it = iter(killed)
    seen = [next(it) for _ in range(5)]
    state = killed.state_dict()
    resumed = ResumableDistributedSampler(data, 2, 1, shuffle=True, seed=7)
    resumed.load_state_dict(state)
    assert len(resumed) == len(expected) - 5
    assert seen + list(resumed) == expected
    resumed.set_epoch(4)
    assert len(list(resumed)) == 11 and list(resumed) == []  # floor(23 / 2); exhausted until the next set_epoch


def test_epochs_reshuffle():
    s = ResumableDistributedSampler(list(range(50)), 1, 0, seed=0)
    a = list(s)
    s.set_epoch(1)
    assert list(s) != a


def _global_steps(state, n: int, replicas: int, batch: int, seed: int = 5):
    """Resume a sampler per rank from `state` and return the global batches (all ranks' samples of a step)."""
    ranks = []
    for r in range(replicas):
        s = ResumableDistributedSampler(list(range(n)), replicas, r, shuffle=True, seed=seed)
        s.set_epoch(2)
        if state:
            s.load_state_dict(state)
        ranks.append(s)
    shards = [list(s) for s in ranks]
    steps = len(shards[0]) // batch  # the loader's drop_last
    return [sorted(i for shard in shards for i in shard[k * batch:(k + 1) * batch]) for k in range(steps)], ranks


@pytest.mark.parametrize("new_replicas", [1, 4])
def test_resuming_on_another_number_of_ranks_keeps_the_global_sample_order(new_replicas):
    n, batch = 40, 2
    order = ResumableDistributedSampler(list(range(n)), 1, 0, shuffle=True, seed=5)
    order.set_epoch(2)
    order = list(order)  # the epoch's global order, the same for any number of ranks
    before, ranks = _global_steps(None, n, 2, batch)
    before = before[:3]  # 3 steps on 2 ranks, then a checkpoint
    state = ranks[0].state_dict(consumed=3 * batch)
    assert state["position"] == 3 * batch * 2
    after, _ = _global_steps(state, n, new_replicas, batch)
    steps = before + after
    seen = [i for step in steps for i in step]
    assert len(seen) == len(set(seen))  # no sample twice in the epoch
    position = 0
    for step in steps:  # each global batch is the next slice of the global order
        assert step == sorted(order[position:position + len(step)])
        position += len(step)
    assert n - position < batch * new_replicas  # only a tail smaller than one global batch is left out


def test_decoding_a_selection_gives_exactly_those_frames_of_the_full_decode(counter):
    from opensora_core.data.dataset import decode_frames

    full = decode_frames(str(counter))
    picked = decode_frames(str(counter), select=lambda n: [0, n // 2, n - 1, n - 1])
    assert picked.shape == (4, *full.shape[1:])
    assert (picked == full[[0, len(full) // 2, len(full) - 1, len(full) - 1]]).all()
