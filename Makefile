# Two commands set everything up on a fresh machine: `make demo` (the main job) and `make test`.
# Both install what they need into .venv/ first; the install is skipped when pyproject.toml is unchanged.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# CPU machines take the CPU build of torch (2.13.0 resolves to the local CPU wheel here) instead of a
# multi-GB CUDA build; machines with nvidia-smi let pip choose the CUDA build.
TORCH_CPU := torch==2.13.0

.PHONY: install demo test test-fast serve mlflow-ui clean-runs

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q "$(TORCH_CPU)"; fi
	$(PIP) install -q -e ".[test]"
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/opensora demo

# the import layers first (seconds; pyproject.toml [tool.importlinter]), then the suite
test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Deployments progressive-training/tiny, precision-comparison/tiny, lr-comparison/tiny against the Prefect
# server at PREFECT_API_URL (default http://127.0.0.1:4200/api; start it with `.venv/bin/opensora pipeline server`).
serve: $(STAMP)
	$(VENV)/bin/opensora pipeline serve

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean-runs:
	rm -rf runs mlflow.db mlartifacts

# ColossalAI engine (optional, GPU clusters): a SEPARATE venv so .venv keeps its torch. The slim route from
# ../shared/notes/colossalai.md: our torch first, then colossalai without its pins (torch 2.5.1 CUDA, ~3 GB of
# nvidia wheels), plus what `import colossalai` and the Booster plugins need. transformers/peft are pinned to the
# versions colossalai 0.5.0 was released with. `pip check` reports colossalai's own pins as broken: expected.
CVENV := .venv-colossal
CPY := $(CVENV)/bin/python
CPIP := $(CVENV)/bin/pip
CSTAMP := $(CVENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
COLOSSAL_DEPS := psutil numpy einops packaging contexttimer rich click pydantic safetensors \
	"transformers==4.51.3" "peft==0.13.2" galore_torch

.PHONY: colossal-venv test-colossal

$(CSTAMP): pyproject.toml
	@test -x $(CPY) || python3 -m venv $(CVENV)
	@echo '*' > $(CVENV)/.gitignore
	@$(CPIP) install -q --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(CPIP) install -q "$(TORCH_CPU)"; fi
	$(CPIP) install -q --no-deps "colossalai==0.5.0"
	$(CPIP) install -q $(COLOSSAL_DEPS)
	$(CPIP) install -q -e ".[test]" "transformers==4.51.3"
	$(CPY) -c "import colossalai; from colossalai.booster import Booster; from colossalai.booster.plugin import LowLevelZeroPlugin, TorchDDPPlugin; print('colossalai', colossalai.__version__)"
	@rm -f $(CVENV)/.installed-* && touch $@

colossal-venv: $(CSTAMP)

test-colossal: $(CSTAMP)
	$(CPY) -m pytest -q -m colossal tests/train
