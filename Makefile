# The README's two commands: `make demo` and `make test`. Each sets up what it needs first:
# .venv (versions pinned by requirements.lock) and the Debian packages it uses.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
EXTRAS := ml,registry,dev
PYTEST_ARGS ?=

# What comes from outside Python (Debian packages), per command:
# - the demo (and benchmarks) read Fashion-MNIST from dataset-fashion-mnist, unless
#   DEMO_ARGS="--data DIR" names another IDX directory;
# - the tests validate compose/ with `docker-compose config` (no PyPI package ships the
#   Compose Specification's schema; the real tool also checks interpolation and required
#   secrets) and make TLS certificates with `openssl`;
# - the console's browser test drives Debian's `chromium` with Playwright (never a browser
#   download: no `playwright install`); `chromium-driver` for Selenium users;
# - the predictor benchmark drives load with `wrk` (it falls back to Python without it).
DEMO_DEBS := $(if $(findstring --data,$(DEMO_ARGS)),,dataset-fashion-mnist)
TEST_DEBS := docker-compose openssl chromium chromium-driver
BENCH_DEBS := dataset-fashion-mnist wrk

.PHONY: venv system-demo system-test system-bench demo test test-fast bench lint format \
	contracts lock clean

# requirements.lock pins every version (torch==2.13.0: a bare `torch` pulls a multi-GB CUDA
# build); `make lock` refreshes it after a dependency changes in pyproject.toml.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $(STAMP)

venv: $(STAMP)

# $(call debs,PACKAGES): install the missing ones with apt-get where this user may (root or
# passwordless sudo): `apt-get update` once, then `apt-get install -y`. Where that is not
# possible, print one line saying what to run; the command that needs a package then says
# so itself (the demo: how to get the data; the tests: which test needs what).
define debs
@missing=""; \
for p in $(1); do \
  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
done; \
[ -n "$$missing" ] || exit 0; \
if ! command -v apt-get >/dev/null 2>&1; then \
  echo "note: not a Debian system; install the equivalent of Debian's$$missing yourself"; exit 0; \
fi; \
if [ "$$(id -u)" = 0 ]; then as="env"; elif sudo -n true 2>/dev/null; then as="sudo -n env"; else \
  echo "note: missing Debian packages; run: sudo apt-get update && sudo apt-get install -y$$missing"; exit 0; \
fi; \
echo "installing Debian packages:$$missing (apt-get)"; \
log=$$(mktemp); \
if $$as DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$$log" 2>&1 \
   && $$as DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >>"$$log" 2>&1; then \
  rm -f "$$log"; \
else \
  why=$$(grep '^E:' "$$log" | tail -n 1); rm -f "$$log"; \
  echo "note: apt-get could not install$$missing ($${why:-see apt-get}); run: sudo apt-get update && sudo apt-get install -y$$missing"; \
fi
endef

system-demo:
	$(call debs,$(DEMO_DEBS))

system-test:
	$(call debs,$(TEST_DEBS))

system-bench:
	$(call debs,$(BENCH_DEBS))

demo: $(STAMP) system-demo
	$(BIN)/lmesh demo $(DEMO_ARGS)

test: $(STAMP) system-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) system-test
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP) system-bench
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs contracts

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

contracts: $(STAMP)
	$(BIN)/python -m contracts.export
	$(BIN)/python -m services.openapi

# Pin what the venv holds (run after adding a dependency to pyproject.toml). pip keeps each
# installed version that still satisfies pyproject.toml and installs what is new (no -c: a
# changed range can move its pin). torch keeps its public version (2.13.0, not 2.13.0+cpu),
# which also matches where the CPU wheel is not on disk.
lock:
	test -x $(BIN)/python || { echo "no $(VENV) yet: run make venv first"; exit 2; }
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	{ echo "# pip constraints: the versions make installs (make lock refreshes; do not edit)"; \
	  $(BIN)/pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*$$/\1/' | LC_ALL=C sort -f; \
	} > $(LOCK).tmp
	grep -q '^torch==2\.13\.0$$' $(LOCK).tmp || { echo "lock: torch is not 2.13.0"; rm $(LOCK).tmp; exit 1; }
	mv $(LOCK).tmp $(LOCK)
	touch $(STAMP)

clean:
	rm -rf $(VENV) .lmesh .pytest_cache .mypy_cache .ruff_cache
