# fracnode's two commands:  `make serve`  and  `make test`  (see README.md).
VENV    ?= .venv
PYTHON  ?= python3
CONFIG  ?= config/fracnode.yaml
STAMP   := $(VENV)/.installed

.PHONY: serve test install system-deps viewer bench bench-radiograph clean

# A venv with torch 2.13.0 (CPU wheel) installed first, so no other package pulls a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[test,train]" "torch==2.13.0"
	touch $@

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/fracnode --config $(CONFIG) serve

system-deps:
	bash scripts/install-system-deps

# The OHIF viewer (npm @ohif/app, pinned in tests/support/ohif.py) the viewer tests open, installed
# once into .cache/ (npm pack checks the registry's integrity hash); a no-op when it is there.
viewer: system-deps $(STAMP)
	$(VENV)/bin/python -m tests.support.ohif

# pytest exits 5 when it collected no test: for this suite that means something is broken
# (wrong folder, import error hiding the tests), so it fails the run instead of passing it.
test: system-deps $(STAMP) viewer
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; run it from the repository root" >&2; exit 1; fi; \
	exit $$rc

bench: $(STAMP) system-deps
	$(VENV)/bin/python -m bench.ingest
	$(VENV)/bin/python -m bench.associations
	$(VENV)/bin/python -m bench.durability
	$(VENV)/bin/python -m bench.database
	$(VENV)/bin/python -m bench.workers

bench-radiograph: $(STAMP) system-deps
	$(VENV)/bin/python -m bench.radiograph_model
	$(VENV)/bin/python -m bench.radiograph

clean:
	rm -rf $(VENV) .pytest_cache .cache
