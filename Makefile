# The two set-up commands of the README:
#   make demo   builds the default model end to end (teacher -> student -> int8 -> C -> checks)
#   make test   runs the test suite
# Both create .venv and install what is missing first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tinyseek-installed
TFLITE := $(VENV)/.tinyseek-tflite-installed
EXTRAS := $(VENV)/.tinyseek-extras-installed

.PHONY: demo test setup setup-demo system clean-venv

# The demo writes its own run (models/demo/, firmware/lib/demo/, both ignored by git) starting
# from the committed default's artifacts: the checkout stays clean, and the student is reused
# when the rebuilt teacher's knowledge matches the committed one. The committed default's
# teacher ran on one thread, and float sums depend on the thread count: the demo's does too.
DEMO := --set run=demo --set teacher.threads=1
demo: setup-demo
	$(BIN)/tinyseek build $(DEMO) --from intents
	$(BIN)/tinyseek bench --env qemu_m4 $(DEMO)

test: setup
	$(BIN)/pytest -q

# Everything, TensorFlow, Ray and the edge frameworks included (the tests exercise `tinyseek
# export --format tflite`, teacher.engine = "ray" and `tinyseek edge --runtime mnn|tvm|coreml`).
setup: system $(STAMP) $(TFLITE) $(EXTRAS)

# The demo never imports TensorFlow, Ray or the edge frameworks: it skips the tflite extra (about
# 1.3 GB installed) and the extras below (about 0.65 GB).
setup-demo: system $(STAMP)

system:
	@sh tools/setup/system-packages.sh

# torch is pinned to the CPU build first, so no other requirement pulls a multi-GB GPU build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[teacher,gguf,test,firmware,edge]"
	$(BIN)/python -m tinyseek.harness.pio_offline
	touch $(STAMP)

# `tinyseek export --format tflite`: tensorflow-cpu and tflite-micro, then legacy Keras with
# --no-deps (its own requirement is the full `tensorflow` wheel).
$(TFLITE): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[tflite]"
	$(BIN)/python -m pip install -q --no-deps "tf_keras==2.21.*"
	touch $(TFLITE)

# The extras the tests need beyond the demo's (pyproject.toml): ray (teacher.engine = "ray", a
# 79 MB wheel) and edge-runtimes (`tinyseek edge --runtime mnn|tvm|coreml`: MNN, Apache TVM,
# coremltools; about 120 MB of wheels) and federated (`tinyseek federate`: flwr with its simulation
# engine on Ray, about 25 MB of wheels beyond Ray).
$(EXTRAS): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[ray,edge-runtimes,federated]"
	touch $(EXTRAS)

clean-venv:
	rm -rf $(VENV)
