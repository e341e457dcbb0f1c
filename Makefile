PY := .venv/bin/python

.PHONY: setup tools test demo clean bench
setup:
	scripts/install.sh

# helm for the chart tests, in .tools/bin (not a Debian package)
tools:
	scripts/install-helm.sh

test: setup tools
	$(PY) -m pytest -q

demo: setup
	$(PY) -m tests.lab demo

clean:
	rm -rf .venv *.egg-info

bench: setup
	$(PY) -m bench
