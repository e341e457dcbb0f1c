PY := .venv/bin/python

.PHONY: setup tools test test-reliability demo clean bench
setup:
	scripts/install.sh

# helm for the chart tests, in .tools/bin (not a Debian package)
tools:
	scripts/install-helm.sh

test: setup tools
	$(PY) -m pytest -q

# The reliability suite alone (make test runs it too): restarts, churn and API faults under load,
# packet fuzzing, full maps, malformed objects, the verifier matrix; figures in the summary.
RELIABILITY := tests/test_reliability_*.py tests/test_packet_fuzz.py tests/test_fuzz_regressions.py \
	tests/test_writer_full_maps.py tests/test_tracker_capacity.py tests/test_malformed_*.py \
	tests/test_lab_malformed.py tests/test_verifier_matrix.py
test-reliability: setup
	$(PY) -m pytest -q $(RELIABILITY)

demo: setup
	$(PY) -m tests.lab demo

clean:
	rm -rf .venv *.egg-info

bench: setup
	$(PY) -m bench
