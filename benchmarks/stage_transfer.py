"""How much of a stage's prompt adherence survives at the next stage's size, before any training there?

A trained stage's EMA weights are loaded into the model of another stage (its frames, size and position scales,
positional embeddings recomputed as progressive training does) and sampled on the evaluate stage's held-out
prompts x `eval.seeds` seeds; one row per `time_scale` tried:

    python benchmarks/stage_transfer.py PROJECT_DIR [--from finetune_512] [--at finetune_64f] [--time-scales 5,3,8]

Used for the tiny preset's 16-frame stage: is direction lost by sampling 16 frames with a 4-frame model, or by the
16-frame training steps?
"""

from __future__ import annotations

import argparse
import os
import sys

from opensora_core.bench.reporter import markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", help="a project whose run directory holds the trained stages (e.g. after make demo)")
    ap.add_argument("--from", dest="source", default="finetune_512", help="the trained stage whose EMA weights load")
    ap.add_argument("--at", default="finetune_64f", help="the stage whose size and scales sample them")
    ap.add_argument("--time-scales", default=None, help="comma-separated stages.<at>.time_scale values (default: its own)")
    args = ap.parse_args()
    os.chdir(args.project)

    from opensora_core.config import load_config
    from opensora_core.encoders import build_text_encoder, build_vae
    from opensora_core.eval import metrics as M
    from opensora_core.eval.evaluation import sample_seeds
    from opensora_core.eval.prompts import heldout_rows
    from opensora_core.checkpoint import load_ema_weights
    from opensora_core.models.stage import build_stage_model
    from opensora_core.train.init import load_carried_weights

    base = load_config()
    scales = [float(v) for v in args.time_scales.split(",")] if args.time_scales else [base.stage(args.at).time_scale]
    vae, text = build_vae(base), build_text_encoder(base)
    rows = heldout_rows(base)
    texts = [r["text"] for r in rows]
    weights = load_ema_weights(base.paths.ckpt_dir(args.source))
    table = []
    for ts in scales:
        cfg = load_config(overrides=[f"stages.{args.at}.time_scale={ts}"])
        model = build_stage_model(cfg, args.at)
        load_carried_weights(model, weights)
        videos = sample_seeds(cfg, model.eval(), vae, text, texts, progress=False)
        s, _ = M.adherence(videos, rows * cfg.eval.seeds)
        table.append({"weights": args.source, "sampled at": args.at, "time_scale": f"{ts:g}",
                      "colour": f"{s['color_acc']:.3f}", "direction": f"{s['direction_acc']:.3f}",
                      "samples": f"{s['adherence_n']:.0f}"})
        print(f"time_scale {ts:g}: colour {s['color_acc']:.3f}, direction {s['direction_acc']:.3f}", file=sys.stderr,
              flush=True)
    print(markdown_table(table))


if __name__ == "__main__":
    main()
