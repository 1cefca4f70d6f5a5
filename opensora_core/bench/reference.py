"""Our STDiT vs Open-Sora 1.0's own STDiT: training-step tokens/s, same weights and inputs, one process
(`opensora bench reference`).

Both models are built from one set of weights (the reference gets a strict copy of our state dict) and first
shown to compute the same function (max |difference| of one eval forward is a column of the table). Then each
contender runs ``warmup`` untimed steps and ``rounds`` timed rounds, interleaved (``step.interleaved_times``);
a row gives the median tokens/s over the rounds and the min-max, and the median CPU time of the process per
step (on a CPU shared with other jobs, wall time mostly measures the waiting; CPU time counts the work). A step
is ``step.training_step`` on random latents and captions, half of one caption masked (the packed / padded
cross-attention path).

Caption dropout is off (class_dropout_prob 0): Open-Sora 1.0's token_drop calls ``.cuda()``, and dropout
does not change the work of a step.

A contender is a name, a model factory and an optimizer form ("for-loop" is what train/ builds today,
``foreach=False``; "foreach" and "fused" are torch's multi-tensor and fused AdamW kernels). A compiled
contender (``torch.compile`` of the whole model) also reports its compile time (first step minus a step)
and the steps it takes to pay it back against eager "ours".
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from opensora_core.bench.opensora_reference import build_reference_like, load_reference_stdit
from opensora_core.bench.reporter import Report
from opensora_core.bench.step import interleaved_times, random_inputs, sync, training_step
from opensora_core.models.registry import build_model

OPTIMIZER_FORMS = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
EXTRA_ROWS = ("foreach", "fused", "compile")  # `--also`: rows of ours with another AdamW form, or compiled


@dataclass(frozen=True)
class ReferenceBenchConfig:
    """The issue's configuration: STDiT depth 4, hidden 256, 4 heads, 8x16x16 latent, batch 2, 24 tokens."""

    depth: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    latent: tuple[int, int, int] = (8, 16, 16)
    batch_size: int = 2
    caption_tokens: int = 24
    caption_channels: int = 64  # the tiny preset's text encoder width
    rounds: int = 9
    warmup: int = 2
    steps_per_round: int = 1
    threads: int | None = 1  # None: torch's default
    seed: int = 0

    def model_kwargs(self) -> dict:
        return dict(depth=self.depth, hidden_size=self.hidden_size, num_heads=self.num_heads,
                    input_size=self.latent, caption_channels=self.caption_channels,
                    model_max_length=self.caption_tokens, class_dropout_prob=0.0)


@dataclass
class Contender:
    """``build(ours)`` returns the module to train (given our model with the shared weights)."""

    name: str
    build: Callable[[nn.Module], nn.Module]
    optimizer: str = "for-loop"
    compile: bool = False
    extra: dict = field(default_factory=dict)  # filled while running: compile seconds etc.


def bench_inputs(cfg: ReferenceBenchConfig, model: nn.Module, device: torch.device) -> dict:
    """The step's inputs: ``step.random_inputs`` of the configured latent and batch, half of the last caption padded."""
    return random_inputs(model, cfg.latent, cfg.batch_size, device, seed=cfg.seed + 1, padding="last")


def make_step(model: nn.Module, optimizer_form: str, inputs: dict, compiled: bool = False) -> Callable[[], None]:
    """One training step of ``model`` (forward, MSE, backward, AdamW in ``optimizer_form``) on fixed inputs."""
    if optimizer_form not in OPTIMIZER_FORMS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_FORMS)}, got {optimizer_form!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, eps=1e-8, **OPTIMIZER_FORMS[optimizer_form])
    return training_step(model, opt, inputs, forward=torch.compile(model) if compiled else model)


def max_output_difference(a: nn.Module, b: nn.Module, inputs: dict) -> float:
    """max |a(inputs) - b(inputs)| in eval mode (the same function, up to float rounding)."""
    with torch.no_grad():
        args = (inputs["x"], inputs["timestep"], inputs["y"], inputs["mask"])
        return float((a.eval()(*args) - b.eval()(*args)).abs().max())


def run_reference_benchmark(contenders: list[Contender], cfg: ReferenceBenchConfig = ReferenceBenchConfig(),
                            device: str = "cpu", on_round=None, log=print) -> list[dict]:
    """Rows (one per contender, the first being the baseline of the ratio column); see the module doc."""
    dev = torch.device(device)
    if cfg.threads and dev.type == "cpu":
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ours = build_model("STDiT-tiny", **cfg.model_kwargs())
    _randomize_zero_init(ours, cfg.seed)
    inputs = bench_inputs(cfg, ours, dev)
    tokens_per_step = cfg.batch_size * ours.num_tokens(cfg.latent)

    models = {c.name: c.build(ours).to(dev) for c in contenders}
    first = models[contenders[0].name]
    differences = {name: max_output_difference(first, m, inputs) for name, m in models.items()}
    steps = {c.name: make_step(models[c.name], c.optimizer, inputs, c.compile) for c in contenders}
    for c in contenders:
        start = time.perf_counter()
        steps[c.name]()  # the first step: compiles when asked, so time it apart
        sync(dev)
        c.extra["first_step_s"] = time.perf_counter() - start
        for _ in range(max(cfg.warmup - 1, 0)):
            steps[c.name]()
        log(f"{c.name}: first step {c.extra['first_step_s']:.2f} s, warmed up")
    times = interleaved_times(steps, cfg.rounds, cfg.steps_per_round, dev, on_round)
    return summarize(contenders, times, tokens_per_step, differences)


def summarize(contenders: list[Contender], times: dict[str, dict[str, list[float]]], tokens_per_step: int,
              differences: dict[str, float]) -> list[dict]:
    base = statistics.median(times[contenders[0].name]["wall"])
    base_cpu = statistics.median(times[contenders[0].name]["cpu"])
    rows = []
    for c in contenders:
        t, cpu = times[c.name]["wall"], statistics.median(times[c.name]["cpu"])
        med = statistics.median(t)
        row = {
            "model": c.name, "optimizer": c.optimizer, "compiled": c.compile,
            "tokens/s": round(tokens_per_step / med, 1),
            "min-max tokens/s": f"{tokens_per_step / max(t):.0f}-{tokens_per_step / min(t):.0f}",
            "step_ms": round(med * 1e3, 1), "ratio": round(base / med, 3), "rounds": len(t),
            "cpu_ms": round(cpu * 1e3, 1), "cpu ratio": round(base_cpu / cpu, 3),
            "max|diff|": float(f"{differences[c.name]:.2e}"),
        }
        if c.compile:
            # compile cost in steps: (first step - a step) / (what a compiled step saves over eager "ours")
            eager = statistics.median(times["ours"]["wall"]) if "ours" in times else base
            saved = eager - med
            row["compile_s"] = round(c.extra["first_step_s"] - med, 1)
            row["break_even_steps"] = round(row["compile_s"] / saved) if saved > 0 else None
        rows.append(row)
    return rows


def _randomize_zero_init(model: nn.Module, seed: int) -> None:
    """Open-Sora zero-initialises the output layers; with zeros the temporal and cross branches would do no
    work a gradient could see. Small random values everywhere make both models' steps representative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


# -- contenders ---------------------------------------------------------------------------------------------------


def ours_contender(name: str = "ours", optimizer: str = "for-loop", compile: bool = False) -> Contender:
    return Contender(name, lambda ours: copy.deepcopy(ours), optimizer, compile)


def opensora_contender(checkout, optimizer: str = "for-loop") -> Contender:
    """Open-Sora 1.0's STDiT from a checkout of hpcaitech/Open-Sora v1.0.0 (see opensora_reference)."""
    reference_cls = load_reference_stdit(checkout)
    return Contender("Open-Sora 1.0", lambda ours: build_reference_like(reference_cls, ours), optimizer)


def contenders_for(checkout, also: list[str] = ()) -> list[Contender]:
    """Open-Sora 1.0 (the baseline), ours, and a row of ours per ``also`` entry (one of EXTRA_ROWS).
    Raises ReferenceCheckoutError when ``checkout`` holds no Open-Sora 1.0."""
    contenders = [opensora_contender(checkout), ours_contender()]
    for extra in also:
        contenders.append(ours_contender(f"ours, {extra}", optimizer=extra if extra != "compile" else "for-loop",
                                         compile=extra == "compile"))
    return contenders


def reference_report(rows: list[dict], cfg: ReferenceBenchConfig, device: str, checkout) -> Report:
    """The table, the ratio lines and the MLflow params and metrics of a reference benchmark."""
    latent = "x".join(map(str, cfg.latent))
    metrics = {}
    for r in rows:
        key = r["model"].replace(" ", "_").replace(",", "").replace(".", "_")
        metrics.update({f"{key}.tokens_per_s": r["tokens/s"], f"{key}.step_ms": r["step_ms"],
                        f"{key}.ratio": r["ratio"], f"{key}.max_abs_diff": r["max|diff|"]})
    return Report(
        "reference",
        f"STDiT training step, ours vs Open-Sora 1.0 ({device}, {cfg.threads or 'default'} threads, latent "
        f"{latent}, batch {cfg.batch_size}, median of {cfg.rounds} interleaved rounds)",
        rows, left=("model", "optimizer"),
        lines=[f"{r['model']} / Open-Sora 1.0 tokens/s: {r['ratio']}x" for r in rows[1:]],
        params={"device": device, "torch": torch.__version__, "reference": str(checkout),
                **{k: str(v) for k, v in asdict(cfg).items()}},
        metrics=metrics, tags={"device": device}, run_name=f"bench-reference-{device}")
