PY := .venv/bin/python

.PHONY: setup test demo clean bench
setup:
	scripts/install.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m tests.lab demo

clean:
	rm -rf .venv *.egg-info

bench: setup
	$(PY) -m bench.controlplane
