# Everything installs into .venv from this repo's own files; only Python 3.11 is needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= demo_output

.PHONY: install test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray"

demo: $(STAMP)
	$(VENV)/bin/vsr upscale "$$($(PY) -c 'from vsr_core.data.samples import sample_clip; print(sample_clip("bikes.mp4"))')" \
		$(OUT)/bikes_x3_bicubic.mp4 --bicubic --max-frames 30

clean:
	rm -rf $(OUT) .pytest_cache
