.PHONY: test crds testenv

# Set up the test bed and run every check and test.
test:
	bash tests/run.sh

# Regenerate the CRD from the Rust types.
crds:
	cargo run -q -- crd > crds/databasebackups.yaml

# Install (or check) the test-bed binaries.
testenv:
	bash tests/testenv/install.sh
