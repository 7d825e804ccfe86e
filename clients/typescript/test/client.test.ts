// The enqueue half, against a real server.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  ApiError,
  Client,
  ConflictError,
  FaultlineConnectionError,
  FaultlineError,
  InvalidInputError,
  NotFoundError,
  UnauthorizedError,
} from "../src/index.js";
import { startServer, uniqueQueue, type TestServer } from "./server.js";

let server: TestServer;
let client: Client;

before(async () => {
  server = await startServer();
  client = server.client;
});

after(async () => {
  await server?.stop();
});

describe("enqueue", () => {
  test("every field of POST /v1/jobs round-trips", async () => {
    const queue = uniqueQueue();
    const runAt = new Date(Date.now() + 3_600_000);
    runAt.setMilliseconds(0);
    const payload = { user_id: 42, email: "ada@example.com", nested: { list: [1, 2.5, "x", null, true] } };
    const first = await client.enqueue("welcome.send", payload, {
      queue,
      priority: -3,
      maxAttempts: 8,
      runAt,
      idempotencyKey: `idem-${randomUUID()}`,
      timeoutMs: 30_000,
      concurrencyKey: "user-42",
      uniqueKey: `uniq-${randomUUID()}`,
      uniqueScope: "period",
      uniquePeriodMs: 60_000,
    });
    assert.equal(first.created, true);
    assert.equal(first.replayed, false);
    const job = first.job;
    assert.equal(job.kind, "welcome.send");
    assert.deepEqual(job.payload, payload);
    assert.equal(job.queue, queue);
    assert.equal(job.priority, -3);
    assert.equal(job.max_attempts, 8);
    assert.equal(new Date(job.next_run_at).getTime(), runAt.getTime());
    assert.match(job.idempotency_key ?? "", /^idem-/);
    assert.equal(job.timeout_ms, 30_000);
    assert.equal(job.concurrency_key, "user-42");
    assert.match(job.unique_key ?? "", /^uniq-/);
    assert.equal(job.unique_period_ms, 60_000);
    assert.equal(job.state, "queued");
    assert.equal(job.attempts, 0);

    // depends_on, on a job of its own (it makes the job wait).
    const dependent = await client.enqueue("welcome.followup", { n: 1 }, { queue, dependsOn: [job.id] });
    assert.equal(dependent.created, true);
    assert.deepEqual(dependent.job.depends_on, [job.id]);
    assert.equal(dependent.job.state, "waiting");

    const read = await client.getJob(job.id);
    assert.deepEqual(read.payload, payload);
    assert.equal(read.id, job.id);
    assert.equal(read.concurrency_key, "user-42");
  });

  test("payload defaults to {} and the queue to default", async () => {
    const { job } = await client.enqueue("noop-ts-never-run", undefined, { runAt: new Date(Date.now() + 3_600_000) });
    assert.deepEqual(job.payload, {});
    assert.equal(job.queue, "default");
    await client.cancel(job.id);
  });

  test("idempotency: 201 new, 200 replay, 409 a different request with the same key", async () => {
    const queue = uniqueQueue();
    const key = `key-${randomUUID()}`;
    const a = await client.enqueue("k", { a: 1 }, { queue, idempotencyKey: key });
    const b = await client.enqueue("k", { a: 1 }, { queue, idempotencyKey: key });
    assert.equal(a.created, true);
    assert.equal(b.created, false);
    assert.equal(b.replayed, true);
    assert.equal(b.job.id, a.job.id);
    await assert.rejects(client.enqueue("k", { a: 2 }, { queue, idempotencyKey: key }), (error: unknown) => {
      assert.ok(error instanceof ConflictError, String(error));
      assert.equal(error.status, 409);
      assert.equal(error.code, "idempotency_conflict");
      assert.equal(error.jobId, a.job.id);
      return true;
    });
  });

  test("uniqueness: a duplicate returns the existing job (200)", async () => {
    const queue = uniqueQueue();
    const uniqueKey = `u-${randomUUID()}`;
    const a = await client.enqueue("k", { a: 1 }, { queue, uniqueKey });
    const b = await client.enqueue("k", { a: 2 }, { queue, uniqueKey });
    assert.equal(a.created, true);
    assert.equal(b.created, false);
    assert.equal(b.duplicate, true);
    assert.equal(b.job.id, a.job.id);
  });

  test("batch: created, replayed, conflict, and a dependency on an earlier job by index", async () => {
    const queue = uniqueQueue();
    const key = `bkey-${randomUUID()}`;
    const existing = await client.enqueue("k", { i: 0 }, { queue, idempotencyKey: key });
    const results = await client.enqueueBatch([
      { kind: "k", payload: { i: 1 }, queue },
      { kind: "k", payload: { i: 0 }, queue, idempotencyKey: key },
      { kind: "k", payload: { i: 99 }, queue, idempotencyKey: key },
      { kind: "k2", payload: { i: 3 }, queue, dependsOn: [0], priority: 2, maxAttempts: 2 },
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ["created", "replayed", "conflict", "created"],
    );
    const [r0, r1, r2, r3] = results;
    assert.ok(r0?.status === "created" && r1?.status === "replayed" && r2?.status === "conflict" && r3?.status === "created");
    assert.equal(r1.job.id, existing.job.id);
    assert.equal(r2.existing_job_id, existing.job.id);
    assert.equal(r2.idempotency_key, key);
    assert.deepEqual(r3.job.depends_on, [r0.job.id]);
    assert.equal(r3.job.priority, 2);
    assert.equal(r3.job.max_attempts, 2);
    assert.equal(r3.job.state, "waiting");
  });

  test("batch of 1,000 in one request; 1,001 refused", async () => {
    const queue = uniqueQueue();
    const jobs = Array.from({ length: 1000 }, (_, i) => ({ kind: "bulk", payload: { i }, queue }));
    const results = await client.enqueueBatch(jobs);
    assert.equal(results.length, 1000);
    assert.ok(results.every((r) => r.status === "created"));
    await assert.rejects(client.enqueueBatch([...jobs, { kind: "bulk", queue }]), InvalidInputError);
  });
});

describe("inspect and control", () => {
  test("listJobs filters by queue, kind and state, pages with the cursor; iterateJobs walks every page", async () => {
    const queue = uniqueQueue();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await client.enqueue(i % 2 ? "odd" : "even", { i }, { queue })).job.id);
    const page1 = await client.listJobs({ queue, limit: 2 });
    assert.equal(page1.jobs.length, 2);
    assert.ok(page1.next_cursor);
    assert.equal(page1.jobs[0]?.payload, undefined, "bulky fields left out by default");
    const page2 = await client.listJobs({ queue, limit: 2, cursor: page1.next_cursor ?? undefined, fields: ["payload"] });
    assert.equal(page2.jobs.length, 2);
    assert.ok(page2.jobs[0]?.payload);
    const all: string[] = [];
    for await (const job of client.iterateJobs({ queue, limit: 2 })) all.push(job.id);
    assert.deepEqual([...all].sort(), [...ids].sort());
    const odd = await client.listJobs({ queue, kind: "odd", state: "queued" });
    assert.equal(odd.jobs.length, 2);
    assert.ok(odd.jobs.every((j) => j.kind === "odd" && j.state === "queued"));
  });

  test("cancel and retry", async () => {
    const queue = uniqueQueue();
    const { job } = await client.enqueue("k", {}, { queue });
    const cancelled = await client.cancel(job.id);
    assert.equal(cancelled.state, "cancelled");
    await assert.rejects(client.cancel(job.id), (error: unknown) => error instanceof ConflictError && error.status === 409);
    const retried = await client.retry(job.id);
    assert.equal(retried.state, "queued");
    assert.equal(retried.attempts, 0);
    await assert.rejects(client.retry(job.id), ConflictError);
  });
});

describe("typed errors", () => {
  test("404 unknown job", async () => {
    await assert.rejects(client.getJob(randomUUID()), (error: unknown) => {
      assert.ok(error instanceof NotFoundError);
      assert.ok(error instanceof ApiError);
      assert.ok(error instanceof FaultlineError);
      assert.equal(error.status, 404);
      assert.equal(error.code, "not_found");
      return true;
    });
    await assert.rejects(client.cancel(randomUUID()), NotFoundError);
  });

  test("400/422 bad input names the field", async () => {
    await assert.rejects(client.getJob("not-a-uuid"), (error: unknown) => error instanceof InvalidInputError && error.status === 400);
    await assert.rejects(client.enqueue("", {}), (error: unknown) => {
      assert.ok(error instanceof InvalidInputError);
      assert.equal(error.status, 422);
      assert.equal(error.field, "kind");
      return true;
    });
    await assert.rejects(client.enqueue("k", {}, { maxAttempts: 0 }), (error: unknown) => {
      assert.ok(error instanceof InvalidInputError);
      assert.equal(error.field, "max_attempts");
      return true;
    });
  });

  test("401 without the token, or with a wrong one", async () => {
    const anonymous = new Client({ baseUrl: server.baseUrl });
    await assert.rejects(anonymous.enqueue("k", {}), (error: unknown) => error instanceof UnauthorizedError && error.status === 401);
    const wrong = new Client({ baseUrl: server.baseUrl, token: "wrong" });
    await assert.rejects(wrong.getJob(randomUUID()), UnauthorizedError);
    assert.equal(await anonymous.ready(), true, "/ready needs no token");
  });

  test("no server: FaultlineConnectionError", async () => {
    const nobody = new Client({ baseUrl: "http://127.0.0.1:9", timeoutMs: 2_000 });
    await assert.rejects(nobody.getJob(randomUUID()), (error: unknown) => {
      assert.ok(error instanceof FaultlineConnectionError, String(error));
      assert.ok(!(error instanceof ApiError));
      return true;
    });
  });
});
