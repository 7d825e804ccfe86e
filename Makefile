# The two commands a newcomer needs are `make up` (run it) and `make test` (test it).

CARGO ?= cargo

.PHONY: up test migrate lint drill bench check-deploy screenshots publish-check schema readme

## Run Faultline: API, workers and a private Postgres (unless DATABASE_URL is set).
up:
	./scripts/ensure-postgres
	$(CARGO) run --release -p faultline-queue-cli -- up

## Run every test against a real Postgres (a private cluster unless DATABASE_URL is set): the
## Rust workspace, then the Python and TypeScript clients against the binary it built (each
## installs its tools from its lock file), then their generated types against /openapi.json.
test:
	./scripts/ensure-postgres
	./scripts/ensure-pgbouncer
	./scripts/ensure-chromium
	$(CARGO) test --workspace --locked
	$(CARGO) build --locked -p faultline-queue-cli
	./clients/python/run-tests -q
	./clients/typescript/run-tests
	./scripts/check-client-types

## Refresh the README's dashboard screenshots (docs/ui/*.png) from the browser test.
screenshots:
	./scripts/ensure-postgres
	./scripts/ensure-chromium
	FAULTLINE_UI_SCREENSHOTS=$(CURDIR)/docs/ui $(CARGO) test --locked -p faultline-queue-cli --test integration -- dashboard

## Rewrite docs/schema.sql (the schema the migrations make, as pg_dump prints it) after adding a
## migration; the test suite checks it against a migrated database.
schema:
	./scripts/ensure-postgres
	FAULTLINE_WRITE_SCHEMA=1 $(CARGO) test --locked -p faultline-queue-cli --test integration -- ops::schema

## Rewrite crates/faultline/examples/readme_tour.rs from README.md's tour (the test suite checks
## that they agree, and compiles the example).
readme:
	FAULTLINE_WRITE_README=1 $(CARGO) test --locked -p faultline-queue --test readme_tour

## Apply the schema: to $$DATABASE_URL when set, else to the compose stack's Postgres.
migrate:
	@if [ -n "$$DATABASE_URL" ]; then $(CARGO) run --release -p faultline-queue-cli -- migrate; \
	else docker compose run --rm migrate; fi

## The benchmark (method and figures in BENCHMARKS.md).
bench:
	./scripts/ensure-postgres
	$(CARGO) run --release -p faultline-queue-cli -- bench

## Check the Prometheus config and alert rules (promtool) and, when possible, compose.yaml.
check-deploy:
	./scripts/check-deploy

## Every failure drill (chaos for 60 s), each with its own private Postgres.
drill:
	./scripts/ensure-postgres
	./scripts/ensure-pgbouncer
	$(CARGO) run --release -p faultline-queue-cli -- drill all

## Formatting, lints (examples and tests included; the library with no, each and all of its
## optional features), the API docs without a warning, the declared minimum Rust and the
## library's shape (no function over 60 lines), as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features --locked -- -D warnings
	$(CARGO) clippy -p faultline-queue --lib --no-default-features --locked -- -D warnings
	for feature in derive http webhook testing otel; do \
		$(CARGO) clippy -p faultline-queue --lib --no-default-features --features $$feature --locked -- -D warnings || exit 1; \
	done
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked -p faultline-queue --all-features
	./scripts/check-msrv
	./scripts/check-lean
	./scripts/long-functions --check crates/faultline/src
	./scripts/import-cycles crates/faultline/src

## Package every crate as crates.io would take it, and build each from its package alone.
publish-check:
	@# The dry run unpacks our own packages into Cargo's registry sources under their version
	@# and builds them as registry crates, which Cargo never rebuilds once built: start from
	@# none of an earlier run's sources or artifacts.
	rm -rf target/package $${CARGO_HOME:-$$HOME/.cargo}/registry/src/*/faultline-queue-[0-9]* \
		$${CARGO_HOME:-$$HOME/.cargo}/registry/src/*/faultline-queue-pg-[0-9]* \
		$${CARGO_HOME:-$$HOME/.cargo}/registry/src/*/faultline-queue-cli-[0-9]* \
		$${CARGO_HOME:-$$HOME/.cargo}/registry/src/*/faultline-queue-macros-[0-9]*
	$(CARGO) clean --quiet -p faultline-queue -p faultline-queue-pg -p faultline-queue-macros
	$(CARGO) publish --workspace --dry-run --locked --allow-dirty
