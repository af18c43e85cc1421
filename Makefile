# Everything installs into .venv from this repo's own files; only Python 3.11 is needed.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= demo_output

.PHONY: install browser test test-fast demo bench clean cluster-up cluster-sweep cluster-serve cluster-status cluster-down

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# tests/test_page.py drives the system's Chromium (Debian packages chromium + chromium-driver):
# installed here when missing and we are root (CI); otherwise a hint (VSR_SKIP_BROWSER=1 skips those tests).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$(VSR_SKIP_BROWSER)" = 1 ]; then echo "VSR_SKIP_BROWSER=1: the browser tests are skipped"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "chromium/chromedriver missing: sudo apt-get install -y chromium chromium-driver" \
		"(or VSR_SKIP_BROWSER=1 to skip tests/test_page.py)"; fi

test: $(STAMP) browser
	$(PY) -m pytest -q --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray"

SAMPLE = $$($(PY) -c 'from vsr_core.data.samples import sample_clip; print(sample_clip("$(1)"))')

# The main job on the built-in sample clips: a Tune sweep (train on bigbuckbunny, validate on bikes),
# then the best checkpoint against bicubic, a clip upscaled with it, and the same model over HTTP with the
# sweep on its page (Experiments: trials, curves, compare, promote); it ends by printing the page's address.
# DEMO_SWEEP: up to 6 trials of up to 2400 steps (the shipped sweep_base config), two at a time; ASHA stops the
# worse half at 400, 800 and 1600 steps; the sweep ends after 7 minutes whatever the machine (the rest of
# the demo takes 1-2 minutes more on an idle 2-core CPU).
DEMO_SWEEP ?= --num-samples 6 --grace-steps 400 --time-budget-min 7
demo: $(STAMP)
	$(VENV)/bin/vsr sweep --storage-path $(CURDIR)/$(OUT)/tune --name demo $(DEMO_SWEEP)
	$(VENV)/bin/vsr evaluate --checkpoint $(OUT)/tune/demo/best --max-frames 30 --json $(OUT)/evaluate.json \
		"$(call SAMPLE,bikes.mp4)" "$(call SAMPLE,carphone_pristine.mp4)"
	$(VENV)/bin/vsr upscale "$(call SAMPLE,bikes.mp4)" $(OUT)/bikes_x3.mp4 --checkpoint $(OUT)/tune/demo/best --max-frames 50
	$(PY) serve/demo.py --checkpoint $(OUT)/tune/demo/best --out $(OUT)/serve --evaluation $(OUT)/evaluate.json \
		--experiments $(OUT)/tune/demo

# A Ray cluster started with `ray start` (the head on this machine; other nodes join with
# `RAY_AUTH_MODE=token .venv/bin/ray start --address HEAD_IP:6379` and the same ~/.ray/auth_token).
# Token authentication stays on: the head runs with RAY_AUTH_MODE=token (the token is ~/.ray/auth_token),
# and its clients (`ray job submit`, `serve deploy`) need the same variable.
# The sweep runs as a Ray job with this venv's python; its results go to SWEEP_STORAGE (an absolute
# path: the job runs in an uploaded copy of this folder). RAY_DASHBOARD: the head's dashboard.
RAY_DASHBOARD ?= http://127.0.0.1:8265
RAY_HEAD_ARGS ?=
SWEEP_STORAGE ?= $(CURDIR)/runs/tune
SWEEP_ARGS ?=
SERVE_CONFIG ?= serve/config.yaml
cluster-up cluster-sweep cluster-serve cluster-status: export RAY_AUTH_MODE = token

# `ray start` with RAY_AUTH_MODE=token needs the token to exist: made here once (kept in ~/.ray/auth_token).
cluster-up: $(STAMP)
	$(VENV)/bin/ray get-auth-token --generate > /dev/null
	$(VENV)/bin/ray start --head --dashboard-host 127.0.0.1 $(RAY_HEAD_ARGS)

cluster-sweep: $(STAMP)
	$(VENV)/bin/ray job submit --address $(RAY_DASHBOARD) --working-dir . -- \
		$(abspath $(VENV))/bin/vsr sweep --address auto --storage-path $(SWEEP_STORAGE) $(SWEEP_ARGS)

# Relative paths in the config (the checkpoint) are resolved in the directory the head was started from.
cluster-serve: $(STAMP)
	$(VENV)/bin/serve deploy --address $(RAY_DASHBOARD) $(SERVE_CONFIG)

cluster-status: $(STAMP)
	$(VENV)/bin/serve status --address $(RAY_DASHBOARD)

# Stops every Ray process of this user on this machine (the head, and a local Ray of any other program).
cluster-down:
	$(VENV)/bin/ray stop

# Benchmarks (not tests): quick by default; BENCH_ARGS=--full for longer runs.
# Results: benchmarks/results/<name>.json; see benchmarks/README.md.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(OUT) .pytest_cache
