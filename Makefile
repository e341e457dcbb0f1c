PY := .venv/bin/python

.PHONY: setup test demo clean
setup:
	scripts/install.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m tests.lab demo

clean:
	rm -rf .venv *.egg-info
