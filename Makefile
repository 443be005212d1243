# Two commands do all set-up: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,serve]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jaxcerv.main --config=configs/default.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

# Results go to runs/bench/ (untracked); --peers adds the PyTorch peer when '.[peers]' is installed.
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --config=configs/paper.py --out=runs/bench --peers

clean:
	rm -rf $(VENV) runs
