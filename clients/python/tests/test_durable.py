"""Durable steps, sleeps and signals from a Python worker (docs/durable.md, "Over HTTP"), against
the real server: recorded steps are not run again, a sleep hands the job back without spending an
attempt, a wait parks the job until its signal, a stale lease records nothing."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from conftest import Server, eventually_async

from faultline_queue import (
    AsyncClient,
    Client,
    InvalidInput,
    JobContext,
    LeaseLost,
    Retryable,
    Suspended,
    Worker,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def durable_routes(server: Server) -> None:
    """Fail at once, with the reason, when the server lacks the durable routes."""
    answer = httpx.get(f"{server.url}/v1/jobs/00000000-0000-0000-0000-000000000000/steps", timeout=5)
    if answer.status_code == 404 and "no route" in answer.text:
        pytest.fail(f"the server has no GET /v1/jobs/{{id}}/steps (docs/durable.md, Over HTTP): {answer.text[:200]}")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time of the server's (any number of fraction digits, ``Z``)."""
    m = re.fullmatch(r"(.*?T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    assert m, text
    fraction = (m.group(2) or "").ljust(6, "0")[:6]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{fraction}{zone}")


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_async(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def make_worker(server: Server, queue: str, **options: Any) -> Worker:
    options.setdefault("poll_wait", 0.5)
    options.setdefault("grace", 5.0)
    return Worker(server.url, queues=[queue], **options)


async def state_is(aclient: AsyncClient, job_id: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
    async def check() -> Any:
        job = await aclient.get_job(job_id)
        return job if job["state"] in states else None

    return await eventually_async(check, timeout, what=f"job {job_id} to be {'/'.join(states)}")


async def test_recorded_steps_do_not_run_again_on_retry(server: Server, aclient: AsyncClient, queue: str) -> None:
    """Three steps (a plain handler, in a thread), the third failing on the first attempt: the
    retry runs step 3 only."""
    worker = make_worker(server, queue)
    runs: Counter[str] = Counter()

    @worker.handler("py.three")
    def three(job: dict[str, Any], ctx: JobContext) -> Any:
        def one() -> Any:
            runs["one"] += 1
            return {"charge": "ch_1"}

        async def two() -> Any:  # a step may be a coroutine function, even in a plain handler
            runs["two"] += 1
            return [1, 2]

        def third() -> Any:
            runs["three"] += 1
            if ctx.attempt == 1:
                raise Retryable("the mail server is down", after=0)
            return "sent"

        a = ctx.step("one", one)
        b = ctx.step("two", two)
        c = ctx.step("three", third)
        assert ctx.step("one", lambda: runs.update(["again"])) == a  # a name is recorded once
        return {"a": a, "b": b, "c": c}

    job_id = (await aclient.enqueue("py.three", {}, queue=queue)).id
    async with running(worker):
        done = await state_is(aclient, job_id, "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["result"] == {"a": {"charge": "ch_1"}, "b": [1, 2], "c": "sent"}
    assert done["attempts"] == 2
    assert runs == {"one": 1, "two": 1, "three": 2}
    steps = {s["name"]: s for s in await aclient.steps(job_id)}
    assert sorted(steps) == ["one", "three", "two"]
    assert steps["one"]["attempt"] == 1 and steps["three"]["attempt"] == 2
    assert steps["three"]["lease_token"] > steps["one"]["lease_token"]


async def test_a_sleep_hands_the_job_back_and_is_not_repeated(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)
    runs: list[int] = []
    suspended = asyncio.Event()
    asked: list[datetime] = []

    @worker.handler("py.sleepy")
    async def sleepy(job: dict[str, Any], ctx: JobContext) -> Any:
        runs.append(ctx.lease_token)
        before = await ctx.step("before", lambda: len(runs))
        asked.append(datetime.now(timezone.utc) + timedelta(seconds=1.5))
        try:
            await ctx.sleep(1.5)
        except Exception:  # pragma: no cover - Suspended is no Exception
            raise AssertionError("Suspended must not be caught by except Exception")
        except Suspended:
            suspended.set()
            raise
        return {"before": before, "runs": len(runs)}

    job_id = (await aclient.enqueue("py.sleepy", {}, queue=queue)).id
    async with running(worker):
        await asyncio.wait_for(suspended.wait(), 10)
        parked = await aclient.get_job(job_id)
        assert parked["state"] == "queued", parked
        assert parked["attempts"] == 0  # the attempt was handed back
        assert abs((parse_time(parked["next_run_at"]) - asked[0]).total_seconds()) < 1.0
        done = await state_is(aclient, job_id, "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["result"] == {"before": 1, "runs": 2}  # the first run's step, the sleep not repeated
    assert done["attempts"] == 1
    assert len(runs) == 2 and runs[1] > runs[0]
    names = [s["name"] for s in await aclient.steps(job_id)]
    assert names.count("faultline:sleep:1") == 1 and "faultline:sleep:2" not in names


async def test_a_wait_parks_the_job_until_its_signal(server: Server, aclient: AsyncClient, queue: str) -> None:
    worker = make_worker(server, queue)
    runs = 0

    @worker.handler("py.refund")
    def refund(job: dict[str, Any], ctx: JobContext) -> Any:  # a plain handler: the calls block
        nonlocal runs
        runs += 1
        charge = ctx.step("charge", lambda: "ch_9")
        try:
            got = ctx.wait_for_signal("refund", timedelta(minutes=10))
        except Exception:  # pragma: no cover - Suspended is no Exception
            raise AssertionError("Suspended must not be caught by except Exception")
        return {"charge": charge, "refund": got, "runs": runs}

    job_id = (await aclient.enqueue("py.refund", {}, queue=queue)).id
    async with running(worker):
        waiting = await state_is(aclient, job_id, "waiting")
        assert waiting["waiting_for"]["signal"] == "refund"
        assert parse_time(waiting["waiting_for"]["until"]) > datetime.now(timezone.utc) + timedelta(minutes=9)
        assert waiting["attempts"] == 0
        assert await aclient.send_signal(job_id, "refund", {"cents": 1200}) is True
        assert await aclient.send_signal(job_id, "refund", {"cents": 1}) is False  # the first is kept
        done = await state_is(aclient, job_id, "succeeded", "failed")
    assert done["state"] == "succeeded", done
    assert done["result"] == {"charge": "ch_9", "refund": {"cents": 1200}, "runs": 2}


def test_a_signal_sent_before_the_wait_is_there_at_once(server: Server, client: Client, queue: str) -> None:
    """A plain handler: its wait returns the signal sent before the job even ran."""
    worker = make_worker(server, queue)
    runs = 0

    @worker.handler("py.early")
    def early(job: dict[str, Any], ctx: JobContext) -> Any:
        nonlocal runs
        runs += 1
        return {"got": ctx.wait_for_signal("go", 600), "late": ctx.wait_for_signal("late", 0, default="none")}

    job_id = client.enqueue("py.early", {}, queue=queue).id
    assert client.send_signal(job_id, "go", ["early"]) is True
    assert client.send_signal(job_id, "go") is False
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while (job := client.get_job(job_id))["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(30)
    assert job["state"] == "succeeded", job
    assert job["result"] == {"got": ["early"], "late": "none"}
    assert runs == 1


async def test_a_stale_lease_records_no_step(server: Server, aclient: AsyncClient, queue: str) -> None:
    """A handler whose lease expired under it (heartbeats held back) is refused its step: it is
    told to stop, its outcome is not reported, and the next attempt records the step."""
    worker = make_worker(server, queue, concurrency=1, lease_ttl=1.0)
    seen: list[tuple[int, Any, Any]] = []
    ran: list[int] = []

    @worker.handler("py.stale")
    async def stale(job: dict[str, Any], ctx: JobContext) -> Any:
        if ctx.attempt == 1:
            worker._heartbeats_paused.set()
            await state_is(aclient, ctx.job_id, "queued")  # reaped: the lease is gone
            worker._heartbeats_paused.clear()
            try:
                await ctx.step("s", lambda: ran.append(ctx.lease_token) or ctx.lease_token)
            except LeaseLost as e:
                seen.append((ctx.lease_token, ctx.stop_reason, e.code))
                raise
            raise AssertionError("the stale step was recorded")
        return await ctx.step("s", lambda: ran.append(ctx.lease_token) or ctx.lease_token)

    job_id = (await aclient.enqueue("py.stale", {}, queue=queue)).id
    async with running(worker):
        done = await state_is(aclient, job_id, "succeeded", "failed", timeout=20)
    assert done["state"] == "succeeded", done
    first_token = seen[0][0]
    assert seen == [(first_token, "lease_lost", "lease_lost")]
    assert done["result"] == ran[-1] and done["result"] > first_token
    assert ran == [first_token, done["result"]]  # the stale run's step ran, and was not recorded
    steps = await aclient.steps(job_id)
    assert [(s["name"], s["lease_token"]) for s in steps] == [("s", done["result"])]
    assert len(done["errors"]) == 1  # the expired lease; no report from the stale run


async def test_the_durable_routes_from_the_client(aclient: AsyncClient, queue: str) -> None:
    job_id = (await aclient.enqueue("py.raw", {}, queue=queue)).id
    [claimed] = await aclient.claim("py-raw", [queue], lease_ttl_ms=5000)
    token = claimed["lease_token"]
    assert claimed["steps"] == []
    first = await aclient.record_step(job_id, token, "a b/c", {"n": 1})
    again = await aclient.record_step(job_id, token, "a b/c", {"n": 2})
    assert (first.created, first.result, again.created, again.result) == (True, {"n": 1}, False, {"n": 1})
    with pytest.raises(LeaseLost):
        await aclient.record_step(job_id, token + 1000, "other", 1)
    with pytest.raises(InvalidInput):
        await aclient.record_step(job_id, token, "faultline:mine", 1)
    over = await aclient.sleep_job(job_id, token, datetime(2000, 1, 1, tzinfo=timezone.utc), seq=1)
    assert over["state"] == "over"
    assert (await aclient.wait_for_signal(job_id, token, "never", 0))["outcome"] == "timed_out"
    assert [s["name"] for s in await aclient.steps(job_id)][0] == "a b/c"
    until = datetime.now(timezone.utc) + timedelta(hours=1)
    sleeping = await aclient.sleep_job(job_id, token, until, seq=2)
    assert sleeping["state"] == "sleeping"
    with pytest.raises(LeaseLost):  # the sleep gave the lease back
        await aclient.heartbeat(job_id, token)
    await aclient.cancel(job_id)


def test_step_names_are_checked_before_anything_runs() -> None:
    job = {"id": "j", "kind": "k", "queue": "q", "attempts": 1, "max_attempts": 5, "lease_token": 7}
    ctx = JobContext(job, "w", is_async=False)  # type: ignore[arg-type]
    from faultline_queue import Permanent

    for bad in ("", "  ", "faultline:x", "a\nb", "x" * 256):
        with pytest.raises(Permanent):
            ctx.step(bad, lambda: 1)
    with pytest.raises(Exception, match="running Worker"):
        ctx.step("fine", lambda: 1)
