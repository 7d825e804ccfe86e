"""The enqueue half: every field round-trips, batches, idempotency, typed errors, tokens."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from faultline_queue import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from faultline_queue.client import job_request


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_every_enqueue_field_round_trips(client: Client, queue: str) -> None:
    parent = client.enqueue("py.parent", {}, queue=queue).job
    run_at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    key = f"idem-{uuid.uuid4()}"
    sent = client.enqueue(
        "py.every-field",
        {"user_id": 42, "email": "ada@example.com"},
        queue=queue,
        priority=-3,
        max_attempts=7,
        run_at=run_at,
        idempotency_key=key,
        timeout_ms=timedelta(seconds=12),
        concurrency_key="user-42",
        depends_on=[parent["id"]],
        unique_key=f"unique-{uuid.uuid4()}",
        unique_scope="active",
        traceparent=traceparent,
    )
    assert sent.created and not sent.replayed and not sent.duplicate
    job = client.get_job(sent.id)
    assert job["kind"] == "py.every-field"
    assert job["queue"] == queue
    assert job["payload"] == {"user_id": 42, "email": "ada@example.com"}
    assert job["priority"] == -3
    assert job["max_attempts"] == 7
    assert job["attempts"] == 0
    assert parse_time(job["next_run_at"]) == run_at
    assert job["idempotency_key"] == key
    assert job["timeout_ms"] == 12_000
    assert job["concurrency_key"] == "user-42"
    assert job["depends_on"] == [parent["id"]]
    assert job["state"] == "waiting"  # its dependency has not succeeded
    assert job["unique_key"].startswith("unique-")
    assert job["traceparent"] == traceparent


def test_unique_period_scope_and_duplicates(client: Client, queue: str) -> None:
    first = client.enqueue(
        "py.unique", {"n": 1}, queue=queue, unique_scope="period", unique_period_ms=timedelta(minutes=5)
    )
    assert first.created
    assert first.job["unique_period_ms"] == 300_000
    again = client.enqueue(
        "py.unique", {"n": 1}, queue=queue, unique_scope="period", unique_period_ms=300_000
    )
    assert not again.created and again.duplicate and not again.replayed
    assert again.id == first.id


def test_payload_comes_back_exactly_as_sent(client: Client, queue: str) -> None:
    payload_text = '{"zeta":1,"alpha":[3,2,1],"big":123456789012345678901234567890,"f":0.1000000000000000055511151231257827}'
    job = client.enqueue("py.exact", json.loads(payload_text), queue=queue).job
    raw = client.get_job_raw(job["id"])
    # Key order and big integers survive the round trip through Python and the server.
    assert list(job["payload"]) == ["zeta", "alpha", "big", "f"]
    assert job["payload"]["big"] == 123456789012345678901234567890
    assert b'"payload":{"zeta":1,"alpha":[3,2,1],"big":123456789012345678901234567890' in raw


def test_payload_may_be_any_json_or_omitted(client: Client, queue: str) -> None:
    assert client.enqueue("py.none", queue=queue).job["payload"] == {}
    assert client.enqueue("py.null", None, queue=queue).job["payload"] is None
    assert client.enqueue("py.list", [1, "two"], queue=queue).job["payload"] == [1, "two"]


def test_idempotency_replay_is_200_and_a_different_request_is_409(client: Client, queue: str) -> None:
    key = f"idem-{uuid.uuid4()}"
    first = client.enqueue("py.idem", {"a": 1}, queue=queue, idempotency_key=key)
    replay = client.enqueue("py.idem", {"a": 1}, queue=queue, idempotency_key=key)
    assert first.created and not first.replayed
    assert not replay.created and replay.replayed
    assert replay.id == first.id
    with pytest.raises(IdempotencyConflict) as caught:
        client.enqueue("py.idem", {"a": 2}, queue=queue, idempotency_key=key)
    assert caught.value.status == 409
    assert caught.value.code == "idempotency_conflict"
    assert caught.value.job_id == first.id
    assert isinstance(caught.value, Conflict)


def test_batch_enqueues_in_order_with_per_job_results(client: Client, queue: str) -> None:
    key = f"idem-{uuid.uuid4()}"
    existing = client.enqueue("py.batch", {"i": -1}, queue=queue, idempotency_key=key)
    results = client.enqueue_batch(
        [
            {"kind": "py.batch", "payload": {"i": 0}, "queue": queue, "priority": 2},
            {"kind": "py.batch", "payload": {"i": 1}, "queue": queue, "depends_on": [0]},
            {"kind": "py.batch", "payload": {"i": -1}, "queue": queue, "idempotency_key": key},
            {"kind": "py.batch", "payload": {"i": 99}, "queue": queue, "idempotency_key": key},
        ]
    )
    assert [r["status"] for r in results] == ["created", "created", "replayed", "conflict"]
    assert results[0]["job"]["priority"] == 2
    assert results[1]["job"]["depends_on"] == [results[0]["job"]["id"]]
    assert results[2]["job"]["id"] == existing.id
    assert results[3]["existing_job_id"] == existing.id
    assert results[3]["idempotency_key"] == key


def test_batch_over_1000_is_refused_naming_jobs(client: Client, queue: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        client.enqueue_batch([{"kind": "py.many", "queue": queue}] * 1001)
    assert caught.value.field == "jobs"


def test_invalid_fields_are_named(client: Client, queue: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        client.enqueue("py.bad", {}, queue=queue, max_attempts=0)
    assert caught.value.status == 422
    assert caught.value.field == "max_attempts"
    with pytest.raises(InvalidInput) as caught:
        client.enqueue("", {}, queue=queue)
    assert caught.value.field == "kind"
    with pytest.raises(InvalidInput) as caught:
        client.enqueue("py.bad", {}, queue=queue, idempotency_key="schedule:nope")
    assert caught.value.field == "idempotency_key"
    with pytest.raises(InvalidInput) as caught:
        client.enqueue_batch([{"kind": "py.ok", "queue": queue}, {"kind": "py.bad", "queue": queue, "max_attempts": 0}])
    assert caught.value.field == "jobs[1].max_attempts"


def test_unknown_and_malformed_ids(client: Client) -> None:
    with pytest.raises(NotFound) as caught:
        client.get_job(uuid.uuid4())
    assert caught.value.status == 404 and caught.value.code == "not_found"
    with pytest.raises(NotFound):
        client.cancel(uuid.uuid4())
    with pytest.raises(InvalidInput) as bad:
        client.get_job("not-a-uuid")
    assert bad.value.status == 400


def test_cancel_and_retry(client: Client, queue: str) -> None:
    job = client.enqueue("py.cancel", {}, queue=queue).job
    cancelled = client.cancel(job["id"])
    assert cancelled["state"] == "cancelled"
    with pytest.raises(Conflict) as caught:
        client.cancel(job["id"])
    assert caught.value.code == "invalid_state"
    retried = client.retry(job["id"])
    assert retried["state"] == "queued"
    assert retried["attempts"] == 0
    with pytest.raises(Conflict):
        client.retry(job["id"])  # only failed or cancelled jobs


def test_list_jobs_filters_and_pages(client: Client, queue: str) -> None:
    ids = [client.enqueue("py.list", {"n": n}, queue=queue).id for n in range(5)]
    client.enqueue("py.other", {}, queue=queue)
    page = client.list_jobs(queue=queue, kind="py.list", limit=2)
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]  # newest first
    assert "payload" not in page["jobs"][0]
    assert page["next_cursor"]
    second = client.list_jobs(queue=queue, kind="py.list", limit=2, cursor=page["next_cursor"], fields=["payload"])
    assert [j["payload"]["n"] for j in second["jobs"]] == [2, 1]
    assert [j["id"] for j in client.iter_jobs(queue=queue, kind="py.list", limit=2)] == ids[::-1]
    assert client.list_jobs(queue=queue, state="running")["jobs"] == []
    with pytest.raises(InvalidInput):
        client.list_jobs(state="nonsense")


def test_run_at_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError):
        job_request("x", run_at=datetime(2030, 1, 1))


def test_network_failure_is_connection_failed() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", timeout=2) as c:
        with pytest.raises(ConnectionFailed):
            c.get_job(uuid.uuid4())


def test_token_is_sent_as_bearer(token_server: tuple[str, str], queue: str) -> None:
    url, token = token_server
    with Client(url) as anonymous:
        with pytest.raises(Unauthorized) as caught:
            anonymous.enqueue("py.token", {}, queue=queue)
        assert caught.value.status == 401
    with Client(url, token="wrong") as wrong:
        with pytest.raises(Unauthorized):
            wrong.list_jobs(queue=queue)
    with Client(url, token=token) as authorized:
        job = authorized.enqueue("py.token", {}, queue=queue).job
        assert authorized.get_job(job["id"])["id"] == job["id"]
        assert authorized.cancel(job["id"])["state"] == "cancelled"


@pytest.mark.anyio
async def test_async_client_has_the_same_calls(aclient: AsyncClient, queue: str) -> None:
    key = f"idem-{uuid.uuid4()}"
    first = await aclient.enqueue("py.async", {"x": 1}, queue=queue, idempotency_key=key, priority=1)
    replay = await aclient.enqueue("py.async", {"x": 1}, queue=queue, idempotency_key=key, priority=1)
    assert first.created and replay.replayed and replay.id == first.id
    with pytest.raises(IdempotencyConflict):
        await aclient.enqueue("py.async", {"x": 2}, queue=queue, idempotency_key=key)
    results = await aclient.enqueue_batch([{"kind": "py.async", "queue": queue}] * 3)
    assert [r["status"] for r in results] == ["created"] * 3
    assert (await aclient.get_job(first.id))["payload"] == {"x": 1}
    listed = [j["id"] async for j in aclient.iter_jobs(queue=queue, limit=2)]
    assert len(listed) == 4
    assert (await aclient.cancel(first.id))["state"] == "cancelled"
    assert (await aclient.retry(first.id))["state"] == "queued"
    with pytest.raises(NotFound):
        await aclient.get_job(uuid.uuid4())
    assert await aclient.ready()
