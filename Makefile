# The two commands a newcomer needs:  `make demo`  and  `make test`.  Both set everything up first.
.PHONY: setup demo test quick lint bench soak install-check clean

setup:
	@bash .ci/bootstrap

demo: setup
	.venv/bin/pmg demo

# Everything CI runs: lint, types, and the whole suite including slow tests and bounded fault campaigns.
# Two to four worker processes (pytest-xdist), a test file per worker at a time: most tests wait on
# meters, brokers and clocks rather than compute, so two workers halve the time even on one core
# (about 11 minutes on 2 cores instead of 29).
WORKERS := $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -lt 2 ] && n=2; [ $$n -gt 4 ] && n=4; echo $$n)
test: setup lint
	.venv/bin/pytest -q -m "not soak" -p no:cacheprovider -n $(WORKERS) --dist loadfile

# The inner loop: the unit tests (tests/unit, in-process, under a minute; slow ones excluded by default).
quick: setup
	.venv/bin/pytest -q -x -p no:cacheprovider tests/unit

# The stateful enforcement model at length: 100,000 steps per preset (docs/enforcement.md, "Stateful model").
soak: setup
	.venv/bin/pytest -q -s -m soak -p no:cacheprovider tests/campaigns/test_model_enforcement.py

# The documented install in a temporary root: the wheel into a fresh venv, pmg install-config, run --check,
# a short run of the unit's ExecStart against simulated meters, systemd-analyze (tests/integration/test_install.py).
install-check: setup
	.venv/bin/pytest -q -p no:cacheprovider -m "slow or not slow" tests/integration/test_install.py tests/integration/test_systemd_unit.py

lint: setup
	.venv/bin/ruff check gateway drivers simulators hq tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports

bench: setup
	.venv/bin/python -m bench.run_all

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .grimp_cache .import_linter_cache var/
