"""A project is a directory holding params.yaml, found from the working directory upward (as git finds .git),
or named with --project / OPENSORA_PROJECT; every relative path of its config resolves there, never against the
installed package. `opensora init` makes one."""

from __future__ import annotations

import pytest

from opensora_core import project
from opensora_core.config import ConfigError, load_config

from tests.kit import REPO, dvc, opensora, run


@pytest.fixture(autouse=True)
def _no_project_named(monkeypatch):
    """No test here inherits a project named by the environment (nor do the `opensora` commands it runs)."""
    monkeypatch.delenv(project.PROJECT_ENV, raising=False)


@pytest.fixture
def proj(tmp_path, monkeypatch):
    """A project made by `opensora init` (in-process), with a subfolder; cwd is the subfolder."""
    monkeypatch.delenv(project.PROJECT_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the config's own URI, not an earlier test's
    root = tmp_path / "my-video-model"
    project.init_project(root)
    (root / "notebooks" / "deep").mkdir(parents=True)
    monkeypatch.chdir(root / "notebooks" / "deep")
    return root


def test_the_root_is_the_nearest_folder_upward_holding_params_yaml(proj):
    assert project.find_root() == proj
    cfg = load_config()
    assert cfg.project_dir == proj and cfg.root == proj / "runs" / "tiny"


def test_opensora_project_names_the_root_whatever_the_working_directory(proj, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert project.find_root() is None
    monkeypatch.setenv(project.PROJECT_ENV, str(proj))
    assert load_config().root == proj / "runs" / "tiny"


def test_relative_paths_of_the_config_resolve_against_the_project(proj):
    from opensora_core import tracking
    from opensora_core.encoders.build import _weights_source

    cfg = load_config(overrides=["run_dir=out/x", "data.src=videos", "eval.prompts=prompts.txt"])
    assert cfg.root == proj / "out" / "x"
    assert cfg.resolve_path(cfg.data.src) == proj / "videos"
    assert tracking.resolve_uri(cfg.tracking.uri, cfg.project_dir) == f"sqlite:///{proj / 'mlflow.db'}"
    (proj / "weights" / "vae").mkdir(parents=True)
    assert _weights_source(cfg, "weights/vae", proj, "vae", "-") == str(proj / "weights" / "vae")
    assert _weights_source(cfg, "stabilityai/sd-vae-ft-ema", proj, "vae", "-") == "stabilityai/sd-vae-ft-ema"  # a hub id


def test_prompt_files_are_the_projects_own_else_the_bundled_ones(proj):
    from opensora_core.eval.prompts import heldout_rows

    shipped = heldout_rows(load_config(overrides=["eval.prompts=assets/prompts/showcase.txt"]), 3)
    assert len(shipped) == 3 and all(r["text"] for r in shipped)  # bundled: the project has no assets/ folder
    (proj / "assets" / "prompts").mkdir(parents=True)
    (proj / "assets" / "prompts" / "showcase.txt").write_text("my own prompt\n")
    assert heldout_rows(load_config(overrides=["eval.prompts=assets/prompts/showcase.txt"]), 3) == [{"text": "my own prompt"}]


def test_a_params_file_elsewhere_belongs_to_the_project_around_it(proj, tmp_path):
    (proj / "sweeps").mkdir()
    (proj / "sweeps" / "lr.yaml").write_text((proj / "params.yaml").read_text())
    assert load_config(proj / "sweeps" / "lr.yaml").root == proj / "runs" / "tiny"
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "p.yaml").write_text((proj / "params.yaml").read_text())
    assert load_config(lone / "p.yaml").root == lone / "runs" / "tiny"


def test_outside_any_project_loading_says_run_init(tmp_path, monkeypatch):
    monkeypatch.delenv(project.PROJECT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no params.yaml here or above: run 'opensora init'"):
        load_config()


def test_outside_any_project_a_writing_command_exits_2_and_writes_nothing(tmp_path):
    out = opensora("pipeline", "stage", "prepare", cwd=tmp_path, check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no params.yaml here or above: run 'opensora init'" in out.stderr
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_init_writes_the_project_and_a_second_init_does_nothing(tmp_path):
    root = tmp_path / "new"
    first = opensora("init", str(root), cwd=tmp_path, check=False)
    assert first.returncode == 0, first.stderr
    assert {p.name for p in root.iterdir()} >= {"params.yaml", "dvc.yaml", ".gitignore", ".dvcignore", ".git", ".dvc"}
    assert "runs/" in (root / ".gitignore").read_text().splitlines()
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".git/" not in str(p)}
    second = opensora("init", cwd=root, check=False)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".git/" not in str(p)} == before


def test_init_never_overwrites_a_params_yaml_that_differs(tmp_path):
    (tmp_path / "params.yaml").write_text("preset: mine\n")
    out = opensora("init", str(tmp_path), cwd=tmp_path, check=False)
    assert out.returncode == 2 and "params.yaml exists and differs" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing else written either
    assert (tmp_path / "params.yaml").read_text() == "preset: mine\n"


def test_init_with_the_opensora_preset_selects_it(tmp_path):
    out = opensora("init", str(tmp_path / "big"), "--preset", "opensora-1.0", cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    show = opensora("config", "show", "--json", cwd=tmp_path / "big", check=False)
    assert '"name": "STDiT-XL/2"' in show.stdout


def test_init_keeps_existing_ignore_lines_and_adds_its_own(tmp_path):
    (tmp_path / ".gitignore").write_text("secrets.env\n")
    project.init_project(tmp_path)
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[0] == "secrets.env" and "mlflow.db" in lines


def test_the_shipped_template_is_this_repositorys_own_params_and_pipeline():
    """One source: `opensora init` writes this repository's params.yaml and dvc.yaml (the packaged templates link
    to them; a build copies their content), so a user's project runs what CI runs."""
    for name, shipped in project.TEMPLATE_FILES.items():
        assert project.resource("template", shipped).resolve() == (REPO / name).resolve()
        assert project.template_text(name) == (REPO / name).read_text()


def test_no_copy_of_the_template_is_ever_a_dvc_pipeline(tmp_path):
    """Wherever a build puts the package (`pip wheel .` leaves build/lib/opensora_core/...), DVC must not take the
    template for a second pipeline (its outputs would always be missing: `dvc status` never clean, `dvc repro`
    running it): it ships under a name DVC does not collect."""
    import shutil

    run(["git", "init", "-q"], cwd=tmp_path)
    dvc("init", "-q", cwd=tmp_path, timeout=120)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "opensora_core" / "resources", tmp_path / "build" / "lib" / "opensora_core" / "resources")
    (tmp_path / ".dvcignore").unlink(missing_ok=True)  # not even the repository's ignore list is needed
    out = dvc("stage", "list", "--all", cwd=tmp_path, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "resources/template" not in out.stdout and "build" not in out.stdout
    assert out.stdout.split()[0] == "prepare"


def test_dvc_sees_only_this_repositorys_own_pipeline():
    out = dvc("stage", "list", "--all", cwd=REPO, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "resources/template" not in out.stdout
    assert out.stdout.split()[0] == "prepare"
