"""The project every end-to-end test shares (built once per session: a real pipeline run costs minutes on 2
cores): the tool built as a wheel and installed non-editable, a project made by `opensora init` outside this
checkout with a very small tiny preset, and one Prefect flow run of the whole pipeline in it."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.installed import opensora
from tests.kit import REPO, run

SMALL = {  # presets.tiny keys: seconds per stage instead of minutes
    "data": {"num_videos": 16},
    "vae": {"train_steps": 10, "train_batch_size": 8},
    "train": {"ckpt_every": 2, "log_every": 1, "sample_steps": 2},  # the watch passes (step 0, last step) stay cheap
    "stages": {"pretrain_256": {"max_steps": 3, "batch_size": 4}, "finetune_512": {"max_steps": 2, "batch_size": 4},
               "finetune_64f": {"max_steps": 2, "batch_size": 2}},
    "eval": {"num_prompts": 2, "sampling_steps": 3},
}


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict):
            _merge(base.setdefault(k, {}), v)
        else:
            base[k] = v


def _build_wheel(tmp: Path) -> Path:
    """A wheel of the tool, built from a copy of its sources (the build writes build/ and egg-info beside them)."""
    src = tmp / "src"
    for name in ("opensora_core", "flows"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    return next((tmp / "dist").glob("opensora_flow-*.whl"))


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """The wheel installed non-editable into its own folder (the venv supplies the dependencies): `opensora`
    there imports the installed package, not this checkout (PYTHONPATH comes before the editable install)."""
    tmp = tmp_path_factory.mktemp("wheel")
    site = tmp / "site"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(_build_wheel(tmp))], cwd=tmp)
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{site / 'bin'}:{bindir}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for var in ("OPENSORA_PARENT_RUN_ID", "PREFECT_API_URL", "OPENSORA_RUN_TAGS", "MLFLOW_TRACKING_URI", "PREFECT_HOME",
                "PREFECT_API_DATABASE_CONNECTION_URL", "OPENSORA_PROJECT"):
        env.pop(var, None)
    return site, env


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="session")
def clone(installed, tmp_path_factory):
    """A project made by `opensora init` in a folder outside this checkout, with small parameters, committed."""
    site, env = installed
    root = tmp_path_factory.mktemp("project") / "my-video-model"
    run([str(site / "bin" / "opensora"), "init", str(root)], cwd=root.parent, env=env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    _merge(params["presets"]["tiny"], SMALL)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "add", "-A"], cwd=root, env=env)
    run(["git", "commit", "-q", "-m", "a new opensora-flow project"], cwd=root, env=env)
    return root, env


@pytest.fixture(scope="session")
def flow_run(installed, clone):
    site, _ = installed
    root, env = clone
    installed_files = _files(site)
    t0 = time.time()
    out = opensora("pipeline", "run", cwd=root, env=env)
    seconds = time.time() - t0
    assert _files(site) == installed_files  # nothing written into the installed package
    return out, seconds


