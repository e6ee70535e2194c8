# hcc25d — two commands: `make book` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
# the environment is keyed on the lock file's hash: nothing is reinstalled while the lock is unchanged
STAMP  := $(VENV)/.lock-$(shell sha256sum $(LOCK) | cut -c1-16)
RUN    ?= synthetic

.PHONY: all env book run render test check-book clean distclean

all: book

env: $(STAMP)

$(STAMP): $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.lock-*
	@touch $@
	@echo "environment ready: $(VENV) ($(LOCK) $(shell sha256sum $(LOCK) | cut -c1-16))"

# run the stage notebooks of params/$(RUN).yaml (unchanged stages are skipped), then render the book
book: run render

run: env
	$(PY) -m hcc25d run --params params/$(RUN).yaml

render: env
	$(PY) -m hcc25d book --run $(RUN)

test: env
	$(PY) -m pytest

# open every page of the rendered book in headless Chromium: overflow, broken images/links, JS errors,
# runner plumbing; screenshots in _build/screenshots/
check-book: env
	$(PY) tools/check_book.py

clean:
	rm -rf _build book/executed

distclean: clean
	rm -rf results $(VENV)
