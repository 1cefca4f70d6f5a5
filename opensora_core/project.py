"""The project: the directory holding `params.yaml`, found the way git finds `.git`.

    find_root()            OPENSORA_PROJECT if set, else the nearest folder from the working directory upward
                           that holds params.yaml, else None
    resolve(root, value)   a config's relative path, taken from the project root (URLs, s3:// and hub ids as given)
    resource(name)         a file that ships with the tool (the project template, the bundled prompts)

Nothing resolves against the installed package: a wheel in site-packages and an editable clone behave the same,
and DVC can run a stage in its own temporary copy of the project (`dvc exp run --temp`, queued experiments).
`opensora --project DIR` sets OPENSORA_PROJECT, so every subprocess of the command agrees on the root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

PARAMS_FILE = "params.yaml"
PROJECT_ENV = "OPENSORA_PROJECT"
NOT_FOUND = "no params.yaml here or above: run 'opensora init'"
_RESOURCES = resources.files("opensora_core") / "resources"


def find_root(start: str | Path | None = None) -> Path | None:
    """The project root: OPENSORA_PROJECT, else the nearest folder from `start` (default: cwd) upward holding
    params.yaml, else None."""
    named = os.environ.get(PROJECT_ENV)
    if named:
        return Path(named).expanduser().resolve()
    here = Path(start or os.getcwd()).expanduser().resolve()
    if here.is_file():
        here = here.parent
    return next((d for d in (here, *here.parents) if (d / PARAMS_FILE).is_file()), None)


def is_remote(value: str) -> bool:
    return "://" in value


def resolve(root: Path, value: str | Path) -> Path:
    """`value` as an absolute path: relative paths are taken from the project root, `~` is expanded."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def resolve_local_or_id(root: Path, value: str) -> str:
    """A config value that is either a local path or a hub id / URL (vae.pretrained, model.init_from): the
    project-relative path when it exists there, else the value unchanged (a hub id, a URL, a missing path that the
    loader reports)."""
    if is_remote(value):
        return value
    candidate = resolve(root, value)
    return str(candidate) if candidate.exists() or value.startswith((".", "/", "~")) else value


def resource(*parts: str) -> Path:
    """A file shipped inside the package (works from a wheel: the package is installed as plain files)."""
    path = Path(str(_RESOURCES.joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"opensora-flow is missing its bundled file {'/'.join(parts)} (a broken install?)")
    return path


def bundled_or_project(root: Path, value: str | Path) -> Path:
    """A data file named by the config (eval.prompts): the project's own file, else the bundled file of the same
    relative name (`assets/prompts/showcase.txt` works in every project), else the project path (for the error)."""
    own = resolve(root, value)
    if own.exists() or Path(value).is_absolute():
        return own
    bundled = Path(str(_RESOURCES.joinpath(*Path(value).parts)))
    return bundled if bundled.is_file() else own


# ------------------------------------------------------------------------------------------------------
# `opensora init`

# written exactly; never overwritten. The templates are links to this repository's own params.yaml and dvc.yaml
# (one source; a build copies their content), named so that no copy of them is ever collected as a DVC pipeline.
TEMPLATE_FILES = {"params.yaml": "params.yaml.template", "dvc.yaml": "dvc.yaml.template"}
IGNORE_FILES = {".gitignore": "gitignore", ".dvcignore": "dvcignore"}    # merged: missing lines are appended
PRESETS = ("tiny", "opensora-1.0")


class InitConflict(ValueError):
    """A file of the project exists and differs from what `init` would write; nothing was written."""


def template_text(name: str, preset: str = "tiny") -> str:
    """What `opensora init` writes to the project file `name` (params.yaml: with `preset` chosen)."""
    text = resource("template", TEMPLATE_FILES[name]).read_text()
    if name == "params.yaml":
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (have {', '.join(PRESETS)})")
        text = text.replace("\npreset: tiny\n", f"\npreset: {preset}\n", 1)
    return text


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"`{' '.join(cmd)}` failed in {cwd}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _git_toplevel(folder: Path) -> Path | None:
    done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True)
    return Path(done.stdout.strip()).resolve() if done.returncode == 0 else None


def init_project(folder: str | Path, preset: str = "tiny", dvc_command: list[str] | None = None) -> list[str]:
    """Make `folder` an opensora-flow project: params.yaml, dvc.yaml, .gitignore, .dvcignore, plus `git init` and
    `dvc init` when it is not a repository yet. Returns what was done (empty: it already was this project).

    Raises InitConflict (before writing anything) when params.yaml or dvc.yaml exists with other content.
    """
    root = Path(folder).expanduser().resolve()
    wanted = {dest: template_text(dest, preset) for dest in TEMPLATE_FILES}
    for dest, text in wanted.items():
        path = root / dest
        if path.exists() and path.read_text() != text:
            raise InitConflict(f"{path} exists and differs from what 'opensora init' writes; it was not touched "
                               f"(move it away to start over, or edit it by hand)")
    done: list[str] = []
    root.mkdir(parents=True, exist_ok=True)
    for dest, text in wanted.items():
        if not (root / dest).exists():
            (root / dest).write_text(text)
            done.append(f"wrote {dest}")
    for dest, src in IGNORE_FILES.items():
        path = root / dest
        have = path.read_text().splitlines() if path.exists() else []
        missing = [line for line in resource("template", src).read_text().splitlines() if line not in have]
        if missing and any(not line.startswith("#") for line in missing):
            path.write_text("\n".join([*have, *missing]) + "\n")
            done.append(f"{'updated' if have else 'wrote'} {dest}")
    if _git_toplevel(root) is None:
        _run(["git", "init", "-q"], root)
        done.append("git init")
    if not (root / ".dvc").is_dir():
        subdir = ["--subdir"] if _git_toplevel(root) != root else []  # a project inside a bigger repository
        _run([*(dvc_command or [sys.executable, "-m", "dvc"]), "init", "-q", *subdir], root)
        done.append("dvc init" + (" --subdir" if subdir else ""))
    return done
