# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
#
# TORCH is what pip installs first (pip, not uv: pip finds the local CPU wheel); uv then installs the project
# and its other dependencies (18 s; pip took about 2 minutes), keeping the torch already installed. On a CPU machine with the local PyTorch wheel this takes it
# from disk in seconds; on a GPU machine the same pin pulls the normal CUDA build from PyPI.
# Override it for another CUDA flavour, e.g.
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output

.PHONY: setup demo demo-blend test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[dev]'
	touch $@

# The main job on phantoms, the three studies of the project: synthetic augmentation (Hadzic et al.) on
# hands (Tables 1 and 2, galleries), latent blending (Lim et al.) on jaws (Table 1, galleries), landmark
# diffusion vs. no diffusion on skulls (Table 1). Resumable: a second `make demo` reuses finished steps;
# `make clean` resets. Its time on a 2-core CPU: docs/results.md.
demo: setup
	$(BIN)/xraydiff data summary --config configs/data/hand_phantom.yaml --out $(DEMO_OUT)/data --overwrite
	$(BIN)/xraydiff experiment augment --config configs/demo/hand_augment.yaml --out $(DEMO_OUT)/study
	$(BIN)/xraydiff experiment blend --config configs/demo/panoramic_blend.yaml --out $(DEMO_OUT)/blend
	$(BIN)/xraydiff experiment landmarks --config configs/demo/ceph_landmarks.yaml --out $(DEMO_OUT)/landmarks
	@echo "Reports: $(DEMO_OUT)/study/results.md, $(DEMO_OUT)/blend/results.md, $(DEMO_OUT)/landmarks/results.md"

# The latent-blending study alone (the second study of `make demo`).
demo-blend: setup
	$(BIN)/xraydiff experiment blend --config configs/demo/panoramic_blend.yaml --out $(DEMO_OUT)/blend
	@echo "Report: $(DEMO_OUT)/blend/results.md"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Test files run in parallel (pytest-xdist, one file per worker at a time, so that a file's trained
# fixtures are built once); each worker computes on one thread (tests/conftest.py).
test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses 3 --dist loadfile

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
