# Set-up is part of every target: a fresh machine needs only python3 (3.11), make and, for the
# browser test, Debian's apt (Chromium is installed on first use).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VENDOR := book/_static/vendor/VERSIONS.json
CACHE := _build/.jupyter_cache
INPUTS_HASH := _build/.book-inputs.sha256

.PHONY: setup browser book figure test test-fast benchmark clean

setup: $(STAMP) $(VENDOR)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,book]"
	# The schema of CITATION.cff (1.2.0) ships inside cffconvert; its pinned dependencies
	# would downgrade jsonschema, so only the package itself is installed, for the schema file.
	$(BIN)/pip install --quiet --no-deps cffconvert==2.0.0
	$(BIN)/python -m ipykernel install --sys-prefix --name devrl --display-name devrl
	touch $(STAMP)

$(VENDOR): $(STAMP) src/devrl/book/vendor.py
	$(BIN)/python -m devrl.book.vendor

## Execute every notebook from the committed data/ and build the website into _build/html.
## The execution cache is cleared whenever src/, data/, _toc.yml (figure numbers) or the installed
## packages change. The book's extension (book/_ext/devrl_book.py) copies each figure's SVG, PNG
## and CSV into the site.
book: setup
	@mkdir -p _build
	@hash=$$( (find src data _toc.yml -type f -not -path '*/__pycache__/*' -print0 | sort -z | \
	  xargs -0 sha256sum; $(BIN)/pip freeze) | sha256sum | cut -d' ' -f1); \
	if [ ! -f $(INPUTS_HASH) ] || [ "$$(cat $(INPUTS_HASH))" != "$$hash" ] || \
	   [ -z "$$(ls _build/figures 2>/dev/null)" ]; then \
	  echo "src/, data/ or packages changed: clearing the notebook execution cache"; \
	  rm -rf $(CACHE); fi; \
	echo $$hash > $(INPUTS_HASH).new
	$(BIN)/jupyter-book build . --all --warningiserror --nitpick --keep-going
	@mv $(INPUTS_HASH).new $(INPUTS_HASH)
	@echo "Book: _build/html/index.html; figures as SVG, PNG and CSV: _build/html/figures/"

## Rerun one figure: make figure NAME=plant-overshoot ARGS='-p seeds "[0]"'
figure: setup
	$(BIN)/devrl figure $(NAME) $(ARGS)

## Headless Chromium for the offline render test (Debian's package).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	    $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

## Run every test: unit tests, smoke-scale training, notebooks under papermill, the book build
## and the offline browser check. Two pytest-xdist workers, one per core, each running whole
## test files in order (--dist loadfile), so a file's shared fixture (the smoke notebooks' data
## sets, the built book, a Ray cluster) is made once. (--dist loadgroup would split files more
## finely, but pytest-xdist 3.8 cannot group tests under pytest 9.) TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: setup browser
	$(PYTEST) --durations=25

## Unit tests only (no training, no book).
test-fast: setup
	$(PYTEST) -m "not slow"

## Throughput at the cpu-scale config (run on an idle machine).
benchmark: setup
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache _build book/_static/vendor
