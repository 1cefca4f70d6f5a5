"""params.yaml fuzz: 240 seeded mutations (unknown keys at every level, wrong types, out-of-range values,
impossible combinations, YAML syntax errors, deleted sections) through the real `opensora` app. Every one exits 2
naming the field (or the line), never with a traceback, and neither `config show` nor a writing command
(`pipeline stage prepare`) writes anything. Most run in-process (typer's CliRunner on the real app: the same code
the console script runs); a handful run as real subprocesses."""

from __future__ import annotations

from collections import Counter

import pytest
import typer
import typer.testing
import yaml
from typer.testing import CliRunner

from opensora_core.cli import app

from tests.faults.faults_support import PARAMS, REPO, tree
from tests.faults.params_mutations import KINDS, mutation
from tests.kit import environment, opensora

N_MUTATIONS = 240  # 40 of each kind
SUBPROCESS_SEEDS = (0, 1, 2, 3, 4, 5)  # one of each kind, through `python -m opensora_core.cli.main_module`


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The real params.yaml, with every preset's run_dir moved under a temporary folder (so a config that slipped
    through could only write there, where the test looks)."""
    root = tmp_path_factory.mktemp("fuzz")
    text = PARAMS.read_text()
    tree_ = yaml.safe_load(text)
    for name, preset in tree_["presets"].items():
        run_dir = str(root / "runs" / name)
        text = text.replace(f"run_dir: {preset['run_dir']}", f"run_dir: {run_dir}")
        preset["run_dir"] = run_dir
    assert yaml.safe_load(text) == tree_
    return root, tree_, text


def _write(root, seed, base_tree, text):
    m = mutation(seed, base_tree, text)
    folder = root / f"m{seed:03d}"
    folder.mkdir()
    (folder / "params.yaml").write_text(m.text)
    return m, folder / "params.yaml"


def _check_rejected(m, exit_code, output, exception=None):
    where = f"mutation {m.kind}: {m.description}\n--- output:\n{output}"
    assert exit_code == 2, where
    assert exception is None or isinstance(exception, SystemExit), f"{where}\n{exception!r}"
    assert "Traceback" not in output, where
    assert output.lstrip().startswith("error: "), where
    for words in m.expect:
        assert words in output, f"{where}\n--- expected to name: {words!r}"


def test_the_unmutated_file_is_valid(base):
    root, _, text = base
    (root / "valid.yaml").write_text(text)
    result = CliRunner().invoke(app, ["config", "show", "--params", str(root / "valid.yaml")])
    assert result.exit_code == 0, result.output


def test_params_fuzz_every_mutation_exits_2_naming_the_field_and_writes_nothing(base, monkeypatch):
    root, base_tree, text = base
    # `opensora` builds its click command once per process; CliRunner rebuilds it per call (a third of the time)
    command_line = typer.main.get_command(app)
    monkeypatch.setattr(typer.testing, "_get_command", lambda _app: command_line)
    runner, kinds = CliRunner(), Counter()
    for seed in range(N_MUTATIONS):
        m, params = _write(root, seed, base_tree, text)
        before = tree(root)
        for command in (["config", "show"], ["pipeline", "stage", "prepare", "--no-track"]):
            result = runner.invoke(app, [*command, "--params", str(params)])
            _check_rejected(m, result.exit_code, result.output, result.exception)
        assert tree(root) == before, f"mutation {m.kind}: {m.description} wrote files"
        kinds[m.kind] += 1
    assert not (root / "runs").exists()
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 40, kinds


@pytest.mark.slow
@pytest.mark.parametrize("seed", SUBPROCESS_SEEDS)
def test_params_fuzz_through_the_real_command(base, seed):
    root, base_tree, text = base
    m, params = _write(root, 1000 + seed, base_tree, text)
    command = ["config", "show"] if seed % 2 else ["pipeline", "stage", "prepare", "--no-track"]
    before = tree(root)
    proc = opensora(*command, "--params", str(params), cwd=REPO, timeout=120, check=False,
                    env=environment({"PYTHONDONTWRITEBYTECODE": "1"}))
    _check_rejected(m, proc.returncode, proc.stderr + proc.stdout)
    assert proc.stdout == ""
    assert tree(root) == before
