"""The project every end-to-end test shares (built once per session: a real pipeline run costs minutes on 2
cores): the tool built as a wheel and installed non-editable, a project made by `opensora init` outside this
checkout with a very small tiny preset, and one Prefect flow run of the whole pipeline in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

SMALL = {  # presets.tiny keys: seconds per stage instead of minutes
    "data": {"num_videos": 16},
    "vae": {"train_steps": 10, "train_batch_size": 8},
    "train": {"ckpt_every": 2, "log_every": 1},
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


def sh(cmd: list[str], root: Path, env: dict, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _build_wheel(tmp: Path) -> Path:
    """A wheel of the tool, built from a copy of its sources (the build writes build/ and egg-info beside them)."""
    src = tmp / "src"
    for name in ("opensora_core", "flows"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], tmp, dict(os.environ))
    return next((tmp / "dist").glob("opensora_flow-*.whl"))


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """The wheel installed non-editable into its own folder (the venv supplies the dependencies): `opensora`
    there imports the installed package, not this checkout (PYTHONPATH comes before the editable install)."""
    tmp = tmp_path_factory.mktemp("wheel")
    site = tmp / "site"
    sh([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(_build_wheel(tmp))], tmp, dict(os.environ))
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
    sh([str(site / "bin" / "opensora"), "init", str(root)], root.parent, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    _merge(params["presets"]["tiny"], SMALL)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", "a new opensora-flow project"], root, env)
    return root, env


def opensora(args: list[str], root: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    """The installed `opensora` console script (it runs on the venv's python, importing the wheel's package)."""
    return sh([shutil.which("opensora", path=env["PATH"]), *args], root, env, **kw)


@pytest.fixture(scope="session")
def flow_run(installed, clone):
    site, _ = installed
    root, env = clone
    installed_files = _files(site)
    t0 = time.time()
    out = opensora(["pipeline", "run"], root, env)
    seconds = time.time() - t0
    assert _files(site) == installed_files  # nothing written into the installed package
    return out, seconds


