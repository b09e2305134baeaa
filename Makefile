# make install: .venv with torch (CPU build unless a GPU is present), the package and every extra
# make demo:    a local PD cluster (1 prefill + 1 decode + mini_lb) on the built-in tiny model
# make serve:   the same cluster, kept up until Ctrl-C
# make test:    the whole test suite (CPU; GPU tests skip with a reason)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
comma := ,
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS := $(if $(HAS_GPU),mooncake-cuda$(comma)nixl$(comma)test$(comma)bench,all)

.PHONY: install demo serve test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@ldconfig -p | grep -q libibverbs.so.1 || { \
	  echo "installing Debian's libibverbs1 (needed by the Mooncake transfer engine)"; \
	  (apt-get install -y -q libibverbs1 ibverbs-providers || \
	   (apt-get update -q && apt-get install -y -q libibverbs1 ibverbs-providers)) >/dev/null; }
	@command -v gcc >/dev/null || { \
	  echo "installing gcc (builds the bf16 CPU kernels; without it torch ops are used)"; \
	  (apt-get install -y -q gcc || (apt-get update -q && apt-get install -y -q gcc)) >/dev/null || true; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m sglang.srt.layers.cpu_kernels || echo "CPU kernels not built: torch ops will be used"
	touch $@

demo: install
	$(PY) -m sglang.tools.pd_demo

serve: install
	$(PY) -m sglang.tools.pd_demo --serve

test: install
	$(PY) -m pytest tests -q -rs --durations=25

bench: install
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) models
