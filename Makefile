# The two commands of the README: `make demo` and `make test`. Both (re)create the local
# virtual environment from pyproject.toml when it is missing or older than pyproject.toml.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= quick
JOBS ?= 2
TEST_JOBS ?= 2
export MPLBACKEND := Agg
export PYTHONUNBUFFERED := 1

.PHONY: demo test venv clean-reports

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo "[setup] installing the environment into $(VENV) (torch, torchvision, pydensecrf2, Jupyter, ...;"
	@echo "[setup] 2-5 minutes the first time, most of it downloading and building wheels)"
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); if [ ! -x $(BIN)/python ] && [ "$$free" -lt 7 ]; then \
		echo "[setup] the environment takes about 6.3 GB (torch's CUDA build); $$free GB free here: free some space first" >&2; \
		exit 1; fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
	@echo "[setup] done"

# SynthVOC (quick preset), every method's main run executed into reports/demo/ (JOBS notebooks
# side by side), then the comparison notebook and the summary table. What it skips (ablations,
# sweeps, final networks, seeds) it names, with the command that runs it.
demo: $(STAMP)
	$(BIN)/wsss demo --preset $(PRESET) --jobs $(JOBS)

# TEST_JOBS pytest-xdist workers, one thread each, each test to whichever worker is free (an idle one
# steals queued tests: the notebook runs take minutes, most tests a second). Tests that need the same
# tiny run share it through the session's folder, the run lock keeping a second worker waiting.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist worksteal tests
