.PHONY: test crds testenv kind-demo

# Set up the test bed and run every check and test.
test:
	bash tests/run.sh

# Regenerate the CRD from the Rust types (top level and the chart's copy).
crds:
	cargo run -q -- crd > crds/databasebackups.yaml
	cp crds/databasebackups.yaml charts/dbbackup-operator/crds/databasebackups.yaml

# Install (or check) the test-bed binaries.
testenv:
	bash tests/testenv/install.sh

# Try it on kind with MinIO and a sample MariaDB (needs docker, kind, kubectl, helm).
kind-demo:
	bash scripts/kind-demo.sh
