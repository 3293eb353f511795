# Set-up and the two jobs of the README's quick start.
#
# The venv is created from scratch and torch is installed first, pinned to the
# CPU build that lies on disk on CPU-only machines, so that installing dsport
# (which only asks for torch>=2.4) never pulls a multi-GB CUDA build. On a GPU
# machine pass TORCH='torch==X.Y.Z' for the build you want, or VENV=... to
# reuse an environment that already has torch. With the tilelang extra it also
# assembles the header-only ROCm tree the gfx builds compile against.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= test,triton,tilelang,onnx,plot
BIN    := $(VENV)/bin

.PHONY: setup conformance test clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	$(if $(findstring tilelang,$(EXTRAS)),$(BIN)/dsport hip-headers)
	touch $@

setup: $(VENV)/.installed

# The main job: the conformance matrix over every backend available here.
conformance: setup
	$(BIN)/dsport conformance

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info reports
