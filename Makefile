# make train: set up what is missing, then train on the embedded synthetic dataset (python -m mss.train)
# make test:      set up what is missing, then run the whole test suite, slow tests included (what CI runs)
# make test-fast: the same without the slow tests (-m "not slow"), for development
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.mss-setup
ARGS  ?=

.PHONY: setup train test test-fast clean

$(STAMP): pyproject.toml setup.py scripts/setup.sh
	bash scripts/setup.sh
	touch $@

setup: $(STAMP)

train: $(STAMP)
	$(PY) -m mss.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

clean:
	rm -rf $(VENV) logs outputs multirun .pytest_cache
