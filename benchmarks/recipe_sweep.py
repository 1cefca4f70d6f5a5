"""How fast does a training recipe learn to follow prompts? Sample every checkpoint of some runs, score them.

A research tool for choosing the tiny preset (sizes, lr, batch, steps): train runs with `opensora train` (any
device, e.g. a GPU to sweep quickly), then

  sample  RUN_DIR... --stage S --out latents.pt   every checkpoint's EMA model samples the held-out
          prompts of the run's latent cache (val split; scoring keeps the single-object ones), with the
          evaluate stage's sampler
          (`eval.generate`: same seed, cfg scale and steps); latents only, so no VAE is needed where it runs.
  score   latents.pt                               decode with the tiny VAE, read colour/motion back from
          pixels (`eval.metrics.adherence`), print one row per (run, step) and a CSV next to the file.

The prompts' text embeddings are taken from the cache, so no text encoder is needed either.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from opensora_core.bench.reporter import markdown_table


class _CachedText:
    """A text encoder answering from a latent cache's stored embeddings."""

    def __init__(self, table: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.table = table

    def encode(self, texts):
        ys, masks = zip(*(self.table[t] for t in texts))
        return {"y": torch.stack(ys), "mask": torch.stack(masks)}


def held_out_prompts(cache_dir: Path, limit: int | None = None):
    """Val prompts of a cache: (texts, manifest row indices, {text: (y [1, N, C], mask [N])})."""
    from opensora_core.data.cache import LatentCacheDataset

    ds = LatentCacheDataset(cache_dir, split="val")
    texts, index, table = [], [], {}
    for i in range(len(ds)):
        item = ds[i]
        if item["text"] not in table:
            texts.append(item["text"])
            index.append(item["index"])
            table[item["text"]] = (item["y"], item["mask"])
    return texts[:limit], index[:limit], table


def sample(run_dirs: list[Path], stage: str, out: Path, cfg_scale: float, steps: int, seed: int, limit: int | None):
    from opensora_core.eval.sample import generate, load_checkpoint_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"stage": stage, "runs": {}}
    for run in run_dirs:
        texts, index, table = held_out_prompts(run / "cache" / stage, limit)
        per_step = {}
        for step_dir in sorted((run / "checkpoints" / stage).glob("step_*")):
            model, _, _, _ = load_checkpoint_model(step_dir)
            z = generate(model.to(device), None, _CachedText(table), texts, cfg_scale=cfg_scale, steps=steps,
                         seed=seed, batch_size=64, progress=False, decode=False)
            per_step[int(step_dir.name.split("_")[1])] = z.half()
            print(f"{run.name} {step_dir.name}: sampled {len(texts)}", flush=True)
        losses = run / "checkpoints" / stage / "train_log.csv"
        result["runs"][run.name] = {"texts": texts, "index": index, "latents": per_step,
                                    "log": losses.read_text() if losses.exists() else ""}
    torch.save(result, out)


def score(path: Path, vae_dir: Path, manifest: Path):
    from opensora_core.encoders.vae import VideoAutoencoderKL
    from opensora_core.eval.metrics import adherence

    import pandas as pd

    data = torch.load(path, weights_only=True)
    truth = pd.read_csv(manifest)
    vae = VideoAutoencoderKL.from_pretrained(str(vae_dir))
    table = []
    for run, entry in data["runs"].items():
        rows = [{**truth.iloc[i].to_dict(), "text": t} for i, t in zip(entry["index"], entry["texts"])]
        for step, z in sorted(entry["latents"].items()):
            with torch.no_grad():
                videos = vae.decode(z.float()).clamp(-1, 1)
            summary, _ = adherence(videos, rows)
            table.append({"run": run, "step": step, **{k: round(v, 3) for k, v in summary.items()}})
    df = pd.DataFrame(table)
    cols = ["run", "step", "adherence_n", "color_acc", "color_chance", "motion_acc", "motion_chance",
            "direction_acc", "shape_acc"]
    print(markdown_table(df[cols].to_dict("records")))
    df.to_csv(path.with_suffix(".csv"), index=False)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("runs", nargs="+", type=Path)
    s.add_argument("--stage", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--cfg-scale", type=float, default=4.0)
    s.add_argument("--steps", type=int, default=25)
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument("--limit", type=int, default=None)
    c = sub.add_parser("score")
    c.add_argument("latents", type=Path)
    c.add_argument("--vae", type=Path, default=Path("runs/tiny/encoders/vae"))
    c.add_argument("--manifest", type=Path, default=Path("runs/tiny/data/manifest.csv"))
    a = p.parse_args()
    if a.cmd == "sample":
        sample(a.runs, a.stage, a.out, a.cfg_scale, a.steps, a.seed, a.limit)
    else:
        score(a.latents, a.vae, a.manifest)


if __name__ == "__main__":
    main()
