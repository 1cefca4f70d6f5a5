"""Latent and text-embedding cache: encode every clip once (VAE) and every caption once (text encoder).

Layout of `cfg.paths.cache_dir(stage)`:
  index.json                      fingerprint, stage geometry, per split: shard files, item count, texts, rows
  {split}-{k:05d}.safetensors     latent [n, C, T, h, w] float32, y [n, 1, N, Cc] float32, mask [n, N] int64,
                                  index [n] int64 (the clip's row in the manifest)
Written into a sibling temp dir and renamed, so a crash never leaves a half cache; rebuilt only when the
fingerprint (manifest bytes, stage frames/stride/size, encoder identity) changes.

Heavy or optional imports (pandas, safetensors, torch) happen inside the functions that need
them, so importing this module (the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from opensora_core.remote import remote_operation

log = logging.getLogger(__name__)
SHARD_SIZE = 256
INDEX = "index.json"


def _file_identity(folder: Path) -> list:
    """Sizes and mtimes of the weight files of a local encoder folder (cheap; changes when it is retrained)."""
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime)) for p in folder.rglob("*") if p.is_file())


def default_encoder_key(cfg) -> str:
    """What identifies the encoders of a config: hub ids, or the files of the project's tiny encoders."""
    parts: dict[str, Any] = {"vae": cfg.vae.pretrained or _file_identity(cfg.paths.vae_dir),
                             "text": cfg.text_encoder.pretrained or _file_identity(cfg.paths.text_encoder_dir),
                             "scale": cfg.vae.scaling_factor, "max_len": cfg.text_encoder.model_max_length}
    return json.dumps(parts, sort_keys=True)


def cache_fingerprint(manifest: Path, num_frames: int, frame_interval: int, image_size: int, encoder_key: str) -> str:
    h = hashlib.sha256(Path(manifest).read_bytes())
    h.update(json.dumps([num_frames, frame_interval, image_size, encoder_key]).encode())
    return h.hexdigest()


def build_latent_cache(cfg, stage: str, vae=None, text_encoder=None, manifest: str | Path | None = None,
                       out: str | Path | None = None, batch_size: int = 16, encoder_key: str | None = None,
                       force: bool = False, progress: bool = True, shard_size: int = SHARD_SIZE) -> Path:
    """Encode the train and val clips of `manifest` (default cfg.paths.manifest) for `stage`; returns the cache dir.

    vae: object with `encode(x [B, 3, T, H, W] in [-1, 1]) -> [B, C, T, h, w]` (default build_vae(cfg)).
    text_encoder: object with `encode(list[str]) -> {"y": [B, 1, N, Cc], "mask": [B, N]}` (default build_text_encoder(cfg)).
    Skips the work (returns at once) when the existing cache has the same fingerprint, unless `force`.
    """
    from safetensors.torch import save_file

    from opensora_core.data.dataset import VideoDataset
    from opensora_core.data.manifest import read_manifest, reject_records

    st = cfg.stage(stage)
    manifest = Path(manifest or cfg.paths.manifest)
    out = Path(out or cfg.paths.cache_dir(stage))
    key = encoder_key if encoder_key is not None else default_encoder_key(cfg)
    fingerprint = cache_fingerprint(manifest, st.num_frames, st.frame_interval, st.image_size, key)
    if not force and (out / INDEX).exists():
        try:
            if json.loads((out / INDEX).read_text()).get("fingerprint") == fingerprint:
                log.info("latent cache %s is up to date", out)
                return out
        except json.JSONDecodeError:
            pass
    if vae is None or text_encoder is None:
        from opensora_core.encoders import build_text_encoder, build_vae

        vae = vae if vae is not None else build_vae(cfg)
        text_encoder = text_encoder if text_encoder is not None else build_text_encoder(cfg)

    df = read_manifest(manifest, reject_bad_rows=True, require_text=True)  # bad rows: dropped, with a reason
    rejects = df.attrs["rejects"]
    splits = ["train", "val"] if "split" in df.columns else ["train"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index: dict[str, Any] = {"fingerprint": fingerprint, "stage": stage, "manifest": str(manifest),
                             "num_frames": st.num_frames, "frame_interval": st.frame_interval,
                             "image_size": st.image_size, "splits": {},
                             "rejected": reject_records(rejects)}
    t0, total = time.perf_counter(), 0
    # S3 down or credentials refused: one line naming the clip and the endpoint; the temp dir is never published
    with remote_operation("cache", f"encoding the clips of {manifest}"):
        for split in splits:
            ds = VideoDataset(df, st.num_frames, st.frame_interval, st.image_size, split=split if "split" in df.columns else None)
            entry = {"shards": [], "count": 0, "texts": [], "rows": []}
            bar = tqdm(total=len(ds), desc=f"cache {stage}/{split}", unit="clip", disable=not progress)
            for shard_start in range(0, len(ds), shard_size):
                tensors, texts = encode_shard(ds, range(shard_start, min(shard_start + shard_size, len(ds))), vae,
                                              text_encoder, batch_size, on_batch=bar.update)
                rows = tensors["index"].tolist()
                entry["texts"] += texts
                name = f"{split}-{len(entry['shards']):05d}.safetensors"
                save_file(tensors, str(tmp / name))
                entry["shards"].append({"file": name, "count": len(rows)})
                entry["rows"] += rows
                entry["count"] += len(rows)
            bar.close()
            index["splits"][split] = entry
            total += entry["count"]
    publish_cache(tmp, out, index, total, t0)
    return out


def publish_cache(tmp: Path, out: Path, index: dict, total: int, t0: float) -> None:
    """Write the index into the finished temp dir and swap it in for `out` (a reader never sees half a cache)."""
    dt = time.perf_counter() - t0
    index["seconds"], index["clips_per_second"] = round(dt, 3), round(total / dt, 2) if dt else None
    (tmp / INDEX).write_text(json.dumps(index, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("latent cache %s: %d clips in %.1fs (%.1f clips/s)", out, total, dt, total / max(dt, 1e-9))


def encode_shard(ds, indices, vae, text_encoder, batch_size: int = 16, on_batch=None) -> tuple[dict, list[str]]:
    """Encode dataset items `indices` (in batches of `batch_size`) -> (shard tensors, texts): latent [n, C, T, h, w]
    float32, y [n, 1, N, Cc] float32, mask [n, N] int64, index [n] int64 (manifest rows). The unit of work of a
    cache: shards are independent, so a distributed build (flows/data_prep.py) maps this over shards."""
    import torch

    indices = list(indices)
    lat, ys, masks, rows, texts = [], [], [], [], []
    for b in range(0, len(indices), batch_size):
        items = [ds[i] for i in indices[b:b + batch_size]]
        videos = torch.stack([it["video"] for it in items])
        with torch.no_grad():
            lat.append(vae.encode(videos).float().cpu())
            emb = text_encoder.encode([it["text"] for it in items])
        ys.append(emb["y"].float().cpu())
        masks.append(emb["mask"].long().cpu())
        rows += [it["index"] for it in items]
        texts += [it["text"] for it in items]
        if on_batch:
            on_batch(len(items))
    return {"latent": torch.cat(lat).contiguous(), "y": torch.cat(ys).contiguous(), "mask": torch.cat(masks).contiguous(),
            "index": torch.tensor(rows, dtype=torch.long)}, texts


class LatentCacheDataset:
    """Items of a latent cache: {"latent": [C, T, h, w], "y": [1, N, Cc], "mask": [N], "text": str, "index": int}.

    Shards are loaded on first use and kept (one shard of the tiny preset is a few MB); `index` is the clip's row
    in the manifest, as in VideoDataset.
    """

    def __init__(self, cache_dir: str | Path, split: str = "train"):
        self.dir = Path(cache_dir)
        if not (self.dir / INDEX).exists():
            raise FileNotFoundError(f"no latent cache at {self.dir} (run `opensora data cache --stage <stage>`)")
        meta = json.loads((self.dir / INDEX).read_text())
        if split not in meta["splits"]:
            raise KeyError(f"cache {self.dir} has no split {split!r} (has {', '.join(meta['splits'])})")
        self.meta, entry = meta, meta["splits"][split]
        self.texts = entry["texts"]
        self._where: list[tuple[int, int]] = [(s, j) for s, sh in enumerate(entry["shards"]) for j in range(sh["count"])]
        self._files = [self.dir / sh["file"] for sh in entry["shards"]]
        self._loaded: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self._where)

    def _shard(self, k: int) -> dict:
        if k not in self._loaded:
            from safetensors.torch import load_file

            self._loaded[k] = load_file(str(self._files[k]))
        return self._loaded[k]

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        s, j = self._where[i]
        shard = self._shard(s)
        return {"latent": shard["latent"][j], "y": shard["y"][j], "mask": shard["mask"][j], "text": self.texts[i],
                "index": int(shard["index"][j])}
