# The two commands a newcomer needs are `make up` (run it) and `make test` (test it).

CARGO ?= cargo

.PHONY: up test migrate lint drill bench check-deploy screenshots

## Run Faultline: API, workers and a private Postgres (unless DATABASE_URL is set).
up:
	./scripts/ensure-postgres
	$(CARGO) run --release -- up

## Run every test against a real Postgres (a private cluster unless DATABASE_URL is set).
test:
	./scripts/ensure-postgres
	./scripts/ensure-pgbouncer
	./scripts/ensure-chromium
	$(CARGO) test --locked

## Refresh the README's dashboard screenshots (docs/ui/*.png) from the browser test.
screenshots:
	./scripts/ensure-postgres
	./scripts/ensure-chromium
	FAULTLINE_UI_SCREENSHOTS=$(CURDIR)/docs/ui $(CARGO) test --locked --test integration -- dashboard

## Apply the schema: to $$DATABASE_URL when set, else to the compose stack's Postgres.
migrate:
	@if [ -n "$$DATABASE_URL" ]; then $(CARGO) run --release -- migrate; \
	else docker compose run --rm migrate; fi

## The benchmark (method and figures in BENCHMARKS.md).
bench:
	./scripts/ensure-postgres
	$(CARGO) run --release -- bench

## Check the Prometheus config and alert rules (promtool) and, when possible, compose.yaml.
check-deploy:
	./scripts/check-deploy

## Every failure drill (chaos for 60 s), each with its own private Postgres.
drill:
	./scripts/ensure-postgres
	./scripts/ensure-pgbouncer
	$(CARGO) run --release -- drill all

## Formatting, lints (examples included) and the API docs without a warning, as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) clippy --lib --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked --features testing,otel
