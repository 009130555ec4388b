#!/usr/bin/env bash
# `make test-wheel`: the project as a new user gets it. Build the wheel, check what it ships, install it into a
# fresh venv under /tmp (runtime dependencies only), run every `cs336 ... --help` and a tiny `cs336 train` outside
# the checkout, check that `cs336 grade` without the grading extra exits 2 naming it, then install the extra and
# grade the reference (cs336_basics/ + tests/adapters.py) at full marks.
#   PYTHON=python3 (the interpreter of the fresh venv), WORK=/tmp/... (kept on failure; removed on success)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="${WORK:-$(mktemp -d /tmp/cs336-wheel.XXXXXX)}"
START=$SECONDS
step() { echo "test-wheel [$((SECONDS - START))s] $*"; }

step "building the wheel in $WORK"
"$PYTHON" -m pip wheel --no-deps -q -w "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/cs336_basics-*.whl)"

step "checking its contents"
"$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names}
problems = [f"ships {top}/" for top in ("oracle", "project_tests", "tests", "bench", "docs") if top in tops]
for required in ("cs336_basics/__init__.py", "cs336_common/__init__.py", "cs336_lab/cli.py",
                 "cs336_grading/harness/adapters.py", "cs336_grading/harness/conftest.py",
                 "cs336_grading/harness/test_model.py", "cs336_grading/docs/INTERFACE.md"):
    if required not in names:
        problems.append(f"lacks {required}")
if not any(n.startswith("cs336_grading/harness/_snapshots/") and n.endswith(".npz") for n in names):
    problems.append("lacks the snapshots (cs336_grading/harness/_snapshots/*.npz)")
if [n for n in names if n.startswith("cs336_grading/docs/") and n != "cs336_grading/docs/INTERFACE.md"]:
    problems.append("ships more of docs/ than INTERFACE.md")
if problems:
    sys.exit("the wheel " + "; ".join(problems))
print(f"  {len(names)} files, top level: {sorted(tops)}")
EOF

step "installing it into a fresh venv (runtime dependencies only)"
"$PYTHON" -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
"$BIN/python" -m pip install -q "torch~=2.13.0"  # the CPU build (a bare `pip install` of the wheel may pick CUDA's)
"$BIN/python" -m pip install -q "$WHEEL"

cd "$WORK"  # outside the checkout: only the installed packages are importable
step "cs336 --help and the --help of every command"
"$BIN/cs336" --help >/dev/null
for command in $("$BIN/python" -c "from cs336_lab.cli import COMMANDS; print(*COMMANDS)"); do
    "$BIN/cs336" "$command" --help >/dev/null || { echo "cs336 $command --help failed"; exit 1; }
done

step "a tiny cs336 train"
"$BIN/cs336" -q make-corpus --out corpus --num-train 120 --num-valid 12
"$BIN/cs336" -q train-bpe corpus/train.txt --vocab-size 300 --out tok --num-workers 1 --no-progress
"$BIN/cs336" -q tokenize corpus/train.txt corpus/valid.txt --tokenizer tok --out-dir tok --num-workers 1 --no-progress
"$BIN/cs336" -q train --train-data tok/train.npy --valid-data tok/valid.npy --tokenizer-dir tok --vocab-size 300 \
    --context-length 32 --d-model 32 --num-layers 2 --num-heads 4 --batch-size 8 --max-steps 20 --warmup-steps 2 \
    --eval-every 20 --eval-batches 2 --log-every 20 --checkpoint-every 20 --out-dir run --no-progress --device cpu
test -s run/metrics.jsonl || { echo "cs336 train wrote no run/metrics.jsonl"; ls run; exit 1; }

step "cs336 grade without the grading extra: exit 2, one line"
mkdir -p submission/tests
cp -r "$REPO/cs336_basics" submission/
cp "$REPO/tests/adapters.py" submission/tests/
set +e
"$BIN/cs336" grade submission --out results.json 2>stderr.txt
code=$?
set -e
expected="cs336 grade needs the 'grading' extra: pip install 'cs336-basics[grading]'"
if [ "$code" != 2 ] || [ "$(cat stderr.txt)" != "$expected" ]; then
    echo "expected exit 2 and '$expected', got $code and:"; cat stderr.txt; exit 1
fi

step "installing the grading extra, grading the reference"
"$BIN/python" -m pip install -q "$WHEEL[grading]"
"$BIN/cs336" -q grade submission --out results.json >/dev/null
"$BIN/python" - <<'EOF'
import json, sys
results = json.load(open("results.json"))
tests = results.get("tests", [])
short = [t.get("name") for t in tests if t.get("score", 0) < t.get("max_score", 0)]
if results.get("score") is None or not tests or short:
    sys.exit(f"the reference did not get full marks: score {results.get('score')}, short of it: {short[:10]}")
print(f"  full marks: {results['score']} over {len(tests)} problems")
EOF

step "passed"
cd /
rm -rf "$WORK"
