# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install medal, run all three stages on the bundled dataset
#   make test   - create .venv, install medal with its test extras, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(VENV)/bin/medal demo

test: install
	$(PY) -m pytest -q
