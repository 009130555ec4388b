# cs336-basics: `make demo` runs the main job on the bundled corpus, `make test` runs every test.
# Each target installs what it needs into .venv (pip only: uv/poetry would fetch a CUDA build of torch).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900
SUBMISSION ?=
HANDOUT_DIR ?= build/handout
IMAGES ?= ubuntu-24.04

.PHONY: install lint format test test-slow test-all test-wheel test-autograder test-reference test-oracle test-own test-fast snapshots demo bench gpu-check grade timings handout clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

## The code's format and lint (ruff, configured in pyproject.toml): checked first by `make test`.
lint: install
	$(BIN)/ruff format --check --diff .
	$(BIN)/ruff check .

## Format the code and apply the linter's safe fixes.
format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## The grading suite against our reference (tests/adapters.py), then against the oracle's own adapters
## (proves that any correct implementation passes), then the reference's own tests.
test: install lint
	$(PYTEST) tests
	$(PYTEST) -p oracle.use_oracle tests
	$(PYTEST) -m "not slow" project_tests

## The project tests marked slow: whole submissions graded end to end (attacks, batches, the Gradescope
## run), fault injection, sweeps, the student-package run. CI runs them after `make test`.
test-slow: install
	$(PYTEST) -m slow project_tests

test-all: test test-slow

## The package as a new user gets it (.ci/test_wheel.sh; ~5 min on 2 free cores, ~9 on a loaded machine): build
## the wheel and check what it ships, install it into a fresh venv under /tmp, run every `cs336 ... --help` and a
## tiny `cs336 train`, then with the grading extra grade the reference at full marks. Needs no .venv.
test-wheel:
	PYTHON=$(PYTHON) .ci/test_wheel.sh

## The Gradescope autograder in a debootstrapped base system, IMAGES=ubuntu-24.04 (or debian-12; root, debootstrap, ~10 min):
## setup.sh as root, then run_autograder on the reference (full marks) and a broken submission.
test-autograder: install
	CS336_TEST_AUTOGRADER=1 CS336_TEST_AUTOGRADER_IMAGES=$(IMAGES) $(PYTEST) -s -m slow project_tests/grading/test_autograder_chroot.py

test-reference: install
	$(PYTEST) tests

test-oracle: install
	$(PYTEST) -p oracle.use_oracle tests

test-own: install
	$(PYTEST) project_tests

test-fast: install
	$(PYTEST) -m "not slow" tests project_tests

## Regenerate every fixture and snapshot from the oracle (deterministic: same bytes every time).
snapshots: install
	$(BIN)/python -m oracle.make_snapshots

## The main job: synthetic corpus -> BPE tokenizer -> token arrays -> small LM -> samples (CPU, < 5 min).
demo: install
	$(BIN)/cs336 demo

bench: install
	$(BIN)/python -m bench $(BENCH_FLAGS)

## A recipe's model (default: the TinyStories one) for 300 steps with bf16 autocast and torch.compile on the GPU,
## on synthetic tokens (offline): tokens/s, MFU, the loss falling, a checkpoint sampled; < 5 min. Exit 1 on failure.
## GPU_CHECK_FLAGS="--cpu-smoke" runs the same path on the CPU with a tiny model; "--recipe PATH" another recipe.
gpu-check: install
	$(BIN)/python -m bench.gpu_check $(GPU_CHECK_FLAGS)

grade: install
	@test -n "$(SUBMISSION)" || { echo "usage: make grade SUBMISSION=path/to/dir-or.zip"; exit 2; }
	$(BIN)/cs336 grade "$(SUBMISSION)"

## Each graded test's time budget: grade the reference twice and keep its worker seconds (cs336_grading/grader/timings.json).
timings: install
	$(BIN)/python -m cs336_grading.staff.make_timings .

handout: install
	$(BIN)/cs336 handout "$(HANDOUT_DIR)"

clean:
	rm -rf $(VENV) build runs .pytest_cache .hypothesis
