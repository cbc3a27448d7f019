# ses-relay: `make run` to try it, `make test` to check everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEV    := .dev

.PHONY: run test lint typecheck unit peers bench bench-peers fleet clean

# The virtualenv is rebuilt when the project's dependencies or its C part change.
$(BIN)/.installed: pyproject.toml setup.py relay/smtp/_plainlines.c
	@PYTHON=$(PYTHON) scripts/install-build-tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	rm -f relay/smtp/_plainlines*.so  # a failed rebuild must not leave an old one in use
	$(BIN)/pip install --quiet -e '.[test]'
	@$(BIN)/python -c "from relay.smtp import plainlines as p; \
		print('DATA fast path:', 'compiled' if p.COMPILED else 'NOT compiled, the regex is used')"
	touch $@

## run: start the relay on 127.0.0.1:2587 (STARTTLS) and :2465 (TLS), delivering to .dev/outbox
run: $(BIN)/.installed
	$(BIN)/ses-relay dev-init $(DEV)
	$(BIN)/ses-relay serve --config $(DEV)/ses-relay.yaml

## test: lint, type-check, then the whole suite against real peers
test: $(BIN)/.installed peers lint typecheck unit

lint: $(BIN)/.installed
	$(BIN)/ruff check relay tests bench

typecheck: $(BIN)/.installed
	$(BIN)/mypy --strict relay

unit: $(BIN)/.installed
	$(BIN)/python -m pytest

## peers: install the real SMTP clients the tests drive (Debian packages), if missing
peers:
	@scripts/install-peers

## bench: ses-relay (sesv2, smtp) against a private Postfix (+ Dovecot SASL), side by side (needs root)
bench: $(BIN)/.installed peers bench-peers
	$(BIN)/python bench/compare.py --messages 5000 --sessions 50 --size 5120 --rounds 3
	$(BIN)/python bench/compare.py --messages 200 --sessions 20 --size 1048576 --rounds 3
	$(BIN)/python bench/perconn.py --messages 300 --clients 1,10,50 --rounds 3
	$(BIN)/python bench/engine_floor.py --rounds 3
	$(BIN)/python bench/rate.py

## fleet: 3 relays, a shared Redis send rate and PostgreSQL event store, one SIGKILL (bench/fleet.py)
fleet: $(BIN)/.installed peers
	$(BIN)/python bench/fleet.py

## bench-peers: install what the bench needs beyond the test peers (Dovecot), if missing
bench-peers:
	@scripts/install-bench-peers

clean:
	rm -rf $(VENV) $(DEV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build \
		relay/smtp/_plainlines*.so
