"""`opensora train --stage S [key=value ...]` (one stage, one process or under torchrun) and
`opensora launch --nproc N [--nnodes M --rdzv-endpoint HOST:PORT --node-rank R] -- train --stage S ...`.

Heavy imports (pandas, safetensors, torch) happen inside the commands, so `opensora --help` and the other
commands start without them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer

from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config
from opensora_core.train.launcher import launch

EXIT_NONFINITE = 3
EXIT_CHECKPOINT = 4  # no checkpoint to resume from can be trusted, or the disk filled up while writing one
EXIT_TERMINATED = 143


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        overrides: list[str] = OverridesArgument,
        stage: str = typer.Option(..., "--stage", help="stage of params.yaml, e.g. pretrain_256"),
        params: Path = ParamsOption,
        preset: str = PresetOption,
        no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow (files only)"),
    ) -> None:
        """Train one stage (resumes from its latest checkpoint). Run it under torchrun / `opensora launch`
        for several processes; exits 3 when the NaN guard aborts, 4 when no checkpoint can be trusted or the
        disk fills up while writing one, 143 on SIGTERM."""
        cfg = load_cli_config(params, preset, overrides)
        try:
            cfg.stage(stage)
        except Exception as e:
            fail(str(e))
        rank = os.environ.get("RANK", "0")
        logging.basicConfig(level=logging.INFO, force=True, datefmt="%H:%M:%S", stream=_Stderr(),
                            format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")
        from opensora_core.checkpoint import CheckpointError, EngineMismatchError
        from opensora_core.eval.watch import TrainingWatcher
        from opensora_core.train.loop import NonFiniteLossError, Terminated, train_stage

        try:
            summary = train_stage(cfg, stage, track=not no_track, watcher=TrainingWatcher.for_stage)
        except EngineMismatchError as e:
            fail(str(e))
        except NonFiniteLossError as e:
            fail(str(e), EXIT_NONFINITE)
        except CheckpointError as e:  # the class name too: the pipeline quotes the job's last line naming an Error
            fail(f"{type(e).__name__}: {e}", EXIT_CHECKPOINT)
        except Terminated as e:
            typer.secho(f"stopped: {e}; resume by running the same command", err=True)
            # everything is on disk: skip the interpreter's teardown (gloo/thread pools take seconds) so a
            # pre-empted job is gone promptly
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_TERMINATED)
        if rank == "0":
            typer.echo(f"{stage}: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
                       f"{summary['wall_time_s']:.1f}s -> {cfg.paths.ckpt_dir(stage) / 'final.json'}")

    @app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def launch_cmd(
        ctx: typer.Context,
        nproc: int = typer.Option(1, "--nproc", help="processes per node"),
        nnodes: int = typer.Option(1, "--nnodes"),
        rdzv_endpoint: str = typer.Option(None, "--rdzv-endpoint", help="HOST:PORT of the rendezvous (multi-node)"),
        node_rank: int = typer.Option(None, "--node-rank"),
        rdzv_timeout: float = typer.Option(None, "--rdzv-timeout", min=1,
                                           help="seconds to wait for every node (default OPENSORA_RDZV_TIMEOUT_S or 300)"),
    ) -> None:
        """Run `opensora <args after -->` under torchrun with rank-prefixed output; exits with the job's status."""
        args = [a for a in ctx.args if a != "--"]
        if not args:
            fail("give the command after --, e.g. opensora launch --nproc 2 -- train --stage pretrain_256")
        if rdzv_timeout is not None:  # read by the launcher's command builder
            os.environ["OPENSORA_RDZV_TIMEOUT_S"] = str(int(rdzv_timeout))
        rc = launch(args, nproc=nproc, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint, node_rank=node_rank)
        sys.exit(rc if rc >= 0 else 128 - rc)


class _Stderr:
    """sys.stderr as it is at each write: a caller that swaps it for a while (a test runner) may close the one it
    lent, and a handler holding that one would then fail every later log call of the process."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
