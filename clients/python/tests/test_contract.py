"""What needs no worker protocol: the generated types match the server, the worker's settings
are checked up front."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import Server

from faultline_queue import Worker
from faultline_queue.worker import JobContext

HERE = Path(__file__).resolve().parent.parent


def test_generated_types_match_the_servers_openapi(server: Server) -> None:
    if not (HERE / ".venv" / "bin" / "datamodel-codegen").exists():
        pytest.skip("no clients/python/.venv with datamodel-codegen (run ./run-tests)")
    check = subprocess.run(
        [str(HERE / "generate-types"), "--check", server.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-2000:]


def test_worker_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Worker("http://127.0.0.1:1", queues=[])
    with pytest.raises(ValueError):
        Worker("http://127.0.0.1:1", queues=["q"], lease_ttl=0.5)
    with pytest.raises(ValueError):
        Worker("http://127.0.0.1:1", queues=["q"], concurrency=0)
    worker = Worker("http://127.0.0.1:1", queues="q", lease_ttl=timedelta(seconds=9))
    assert worker.queues == ["q"]
    assert worker.heartbeat_interval == pytest.approx(3.0)
    assert worker.max_batch == worker.concurrency
    worker.register("k", lambda job, ctx: None)
    with pytest.raises(ValueError):
        worker.register("k", lambda job, ctx: None)


def test_context_exposes_the_lease_and_the_stop_signal() -> None:
    job = {"id": "j", "kind": "k", "queue": "q", "attempts": 2, "max_attempts": 5, "lease_token": 77, "payload": {"a": 1}}
    ctx = JobContext(job, "w", is_async=False)  # type: ignore[arg-type]
    assert (ctx.job_id, ctx.attempt, ctx.max_attempts, ctx.lease_token, ctx.payload) == ("j", 2, 5, 77, {"a": 1})
    assert not ctx.should_stop() and ctx.stop_reason is None
    ctx._stop("cancelled")
    ctx._stop("shutdown")  # the first reason is kept
    assert ctx.should_stop() and ctx.stopped.is_set() and ctx.stop_reason == "cancelled"
