PY := .venv/bin/python

.PHONY: setup tools test test-reliability demo clean bench image image-test
# The image `make image` builds and `make image-test` runs: the chart's default name and tag.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= ebpflb:$(VERSION)
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
	find .wheelhouse -mindepth 1 -not -name README.md -delete

# The Dockerfile built with podman (runc, explicit ulimits); the base image made with debootstrap
# and the venv's wheels with the host's pip when no registry or index is reachable from a build.
image:
	scripts/image.sh $(IMAGE)

# The image's agent in a lab node's network namespace, with the chart's default privileges and
# mounts (from `helm template`): it programs the maps, a pod reaches a ClusterIP, `ebpflb nat dump`
# works in the container; also with kernelHeaders.fromHost=false.
image-test: setup tools image
	EBPFLB_IMAGE=$(IMAGE) $(PY) -m pytest -q -m image tests/test_image.py

bench: setup
	$(PY) -m bench
