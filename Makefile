# The two commands a newcomer needs are `make up` (run it) and `make test` (test it).

CARGO ?= cargo

.PHONY: up test migrate lint drill

## Run Faultline: API, workers and a private Postgres (unless DATABASE_URL is set).
up:
	./scripts/ensure-postgres
	$(CARGO) run --release -- up

## Run every test against a real Postgres (a private cluster unless DATABASE_URL is set).
test:
	./scripts/ensure-postgres
	$(CARGO) test --locked

## Apply the schema to $DATABASE_URL.
migrate:
	$(CARGO) run --release -- migrate

## Every failure drill (chaos for 60 s), each with its own private Postgres.
drill:
	./scripts/ensure-postgres
	$(CARGO) run --release -- drill all

## Formatting and lints, as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
