// The worker half, against a real server speaking the HTTP worker protocol (SPEC §15).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, afterEach, before, beforeEach, describe, test } from "node:test";

import {
  Client,
  InvalidInputError,
  JobStoppedError,
  JobSuspendedError,
  LeaseLostError,
  NotFoundError,
  PermanentError,
  RetryableError,
  Worker,
  type Job,
  type JobContext,
  type Logger,
  type StopReason,
  type WorkerOptions,
} from "../src/index.js";
import { startServer, uniqueQueue, waitFor, type TestServer } from "./server.js";

let server: TestServer;
const running: Array<{ worker: Worker; done: Promise<void> }> = [];
let protocolMissing: string | undefined;

before(async () => {
  server = await startServer();
  // Fail each test at once, with a clear message, when the server does not speak the protocol.
  try {
    await server.client.claim({ worker_id: "ts-probe", queues: [uniqueQueue("probe")], max: 1, wait_ms: 0 });
  } catch (error) {
    if (error instanceof NotFoundError) {
      protocolMissing = `this server has no POST /v1/claims (SPEC §15 worker protocol): ${error.message}`;
    }
  }
});

beforeEach(() => {
  if (protocolMissing) throw new Error(protocolMissing);
});

afterEach(async () => {
  // A test that failed midway must not leave a worker claiming.
  await Promise.all(running.splice(0).map(({ worker, done }) => worker.stop({ graceMs: 0 }).then(() => done)));
});

after(async () => {
  await server?.stop();
});

interface Logged {
  level: string;
  message: string;
}

function collectingLogger(into: Logged[]): Logger {
  const add = (level: string) => (message: string) => void into.push({ level, message });
  return { debug: add("debug"), info: add("info"), warn: add("warn"), error: add("error") };
}

function startWorker(options: Partial<WorkerOptions> & { queues: string[] }, logs: Logged[] = []): Worker {
  const worker = new Worker({
    client: server.client,
    pollWaitMs: 1_000,
    logger: collectingLogger(logs),
    ...options,
  });
  return worker;
}

function run(worker: Worker): Promise<void> {
  const done = worker.run();
  running.push({ worker, done });
  return done;
}

async function settled(id: string, timeoutMs = 10_000): Promise<Job> {
  return waitFor(
    `job ${id} to finish`,
    async () => {
      const job = await server.client.getJob(id);
      return ["succeeded", "failed", "cancelled"].includes(job.state) ? job : undefined;
    },
    timeoutMs,
  );
}

function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

function untilAborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
}

describe("worker", () => {
  test("a handler's return value completes the job with that result", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue], concurrency: 2 });
    const seen: JobContext[] = [];
    worker.handle<{ email: string }>("welcome.send", async (job, ctx) => {
      seen.push(ctx);
      return { sent_to: job.payload.email, attempt: ctx.attempt };
    });
    worker.handle("nothing", async () => undefined);
    run(worker);
    const a = await server.client.enqueue("welcome.send", { user_id: 7, email: "a@b.c" }, { queue });
    const b = await server.client.enqueue("nothing", {}, { queue });
    const jobA = await settled(a.job.id);
    assert.equal(jobA.state, "succeeded");
    assert.deepEqual(jobA.result, { sent_to: "a@b.c", attempt: 1 });
    assert.equal(jobA.attempts, 1);
    const jobB = await settled(b.job.id);
    assert.equal(jobB.state, "succeeded");
    assert.equal(jobB.result ?? null, null);
    assert.equal(seen[0]?.jobId, a.job.id);
    assert.equal(typeof seen[0]?.leaseToken, "number");
    assert.equal(seen[0]?.workerId, worker.workerId);
    assert.equal(seen[0]?.signal.aborted, false);
  });

  test("completeBatch lands the good completions and reports the stale one", async () => {
    const queue = uniqueQueue();
    const ids: string[] = [];
    for (let n = 0; n < 3; n++) ids.push((await server.client.enqueue("batch", { n }, { queue })).job.id);
    const claimed = await server.client.claim({ worker_id: "ts-batcher", queues: [queue], max: 3 });
    assert.deepEqual(claimed.map((j) => j.id).sort(), [...ids].sort());
    const token = (id: string) => claimed.find((j) => j.id === id)!.lease_token!;
    const outcomes = await server.client.completeBatch([
      { id: ids[0]!, lease_token: token(ids[0]!), result: { n: 0 } },
      { id: ids[1]!, lease_token: token(ids[1]!) + 1000 }, // stale
      { id: ids[2]!, lease_token: token(ids[2]!) }, // no result
    ]);
    assert.deepEqual(
      outcomes.map((o) => [o.id, o.outcome]),
      [
        [ids[0], "completed"],
        [ids[1], "lease_lost"],
        [ids[2], "completed"],
      ],
    );
    assert.ok(outcomes[1]?.message);
    const [first, stale, third] = await Promise.all(ids.map((id) => server.client.getJob(id)));
    assert.equal(first!.state, "succeeded");
    assert.deepEqual(first!.result, { n: 0 });
    assert.equal(stale!.state, "running", "the stale token changed nothing");
    assert.equal(third!.state, "succeeded");
    assert.equal(third!.result ?? null, null);
    // The stale job's real token still holds its lease; a finished job's token no longer does.
    const again = await server.client.completeBatch([
      { id: ids[1]!, lease_token: token(ids[1]!) },
      { id: ids[0]!, lease_token: token(ids[0]!) },
    ]);
    assert.deepEqual(again.map((o) => o.outcome), ["completed", "lease_lost"]);
  });

  for (const batched of [true, false]) {
    test(`completions are ${batched ? "batched by default" : "sent one by one with batchCompletions: false"}`, async () => {
      const queue = uniqueQueue();
      const counts = { singles: 0, batches: [] as number[] };
      class Counting extends Client {
        override complete<R>(...args: Parameters<Client["complete"]>) {
          counts.singles += 1;
          return super.complete<R>(...(args as [string, number, R?]));
        }
        override completeBatch(...args: Parameters<Client["completeBatch"]>) {
          counts.batches.push(args[0].length);
          return super.completeBatch(...args);
        }
      }
      const client = new Counting({ baseUrl: server.baseUrl, token: server.token });
      const worker = startWorker({ queues: [queue], concurrency: 40, client, batchCompletions: batched });
      worker.handle<{ n: number }>("echo", (job) => ({ n: job.payload.n }));
      const results = await server.client.enqueueBatch(Array.from({ length: 40 }, (_, n) => ({ kind: "echo", payload: { n }, queue })));
      run(worker);
      const done = await Promise.all(results.map((r) => settled((r as { job: Job }).job.id)));
      assert.deepEqual(
        done.map((j) => [j.state, j.result]),
        Array.from({ length: 40 }, (_, n) => ["succeeded", { n }]),
      );
      if (batched) {
        assert.equal(counts.singles, 0);
        assert.equal(counts.batches.reduce((a, b) => a + b, 0), 40);
        assert.ok(counts.batches.length < 40, JSON.stringify(counts.batches));
      } else {
        assert.deepEqual(counts, { singles: 40, batches: [] });
      }
    });
  }

  test("heartbeatBatch extends the live lease and reports the cancelled job and the stale token", async () => {
    const queue = uniqueQueue();
    const ids: string[] = [];
    for (let n = 0; n < 3; n++) ids.push((await server.client.enqueue("hb-batch", { n }, { queue })).job.id);
    const claimed = await server.client.claim({ worker_id: "ts-beater", queues: [queue], max: 3, lease_ttl_ms: 5_000 });
    assert.deepEqual(claimed.map((j) => j.id).sort(), [...ids].sort());
    const job = (id: string) => claimed.find((j) => j.id === id)!;
    await server.client.cancel(ids[1]!);
    const outcomes = await server.client.heartbeatBatch(
      [
        { id: ids[0]!, lease_token: job(ids[0]!).lease_token! },
        { id: ids[1]!, lease_token: job(ids[1]!).lease_token! }, // cancelled
        { id: ids[2]!, lease_token: job(ids[2]!).lease_token! + 1000 }, // stale
      ],
      60_000,
    );
    assert.deepEqual(
      outcomes.map((o) => [o.id, o.outcome]),
      [
        [ids[0], "extended"],
        [ids[1], "cancelled"],
        [ids[2], "lease_lost"],
      ],
    );
    const extendedBy = Date.parse(outcomes[0]!.lease_expires_at!) - Date.parse(job(ids[0]!).lease_expires_at!);
    assert.ok(extendedBy > 30_000, `extended by ${extendedBy} ms`);
    assert.equal(outcomes[1]!.lease_expires_at ?? null, null);
    assert.equal(outcomes[2]!.lease_expires_at ?? null, null);
    // The stale job's real token still holds its lease.
    const again = await server.client.heartbeatBatch([{ id: ids[2]!, lease_token: job(ids[2]!).lease_token! }]);
    assert.deepEqual(again.map((o) => o.outcome), ["extended"]);
  });

  for (const mode of ["batched", "single", "old server"] as const) {
    test(`heartbeats (${mode}) keep leases alive and carry a cancel to its job`, async () => {
      const queue = uniqueQueue();
      const counts = { singles: 0, batches: [] as number[] };
      class Counting extends Client {
        override heartbeat(...args: Parameters<Client["heartbeat"]>) {
          counts.singles += 1;
          return super.heartbeat(...args);
        }
        override heartbeatBatch(...args: Parameters<Client["heartbeatBatch"]>) {
          counts.batches.push(args[0].length);
          if (mode === "old server") return Promise.reject(new NotFoundError(404, { code: "not_found", message: "no such route" }));
          return super.heartbeatBatch(...args);
        }
      }
      const client = new Counting({ baseUrl: server.baseUrl, token: server.token });
      const worker = startWorker({ queues: [queue], concurrency: 4, leaseTtlMs: 1_000, client, batchHeartbeats: mode !== "single" });
      const started = new Set<number>();
      const reasons = new Map<number, StopReason | undefined>();
      worker.handle<{ n: number }>("beating", async (job, ctx) => {
        const n = job.payload.n;
        started.add(n);
        if (n === 0) {
          await untilAborted(ctx.signal); // until cancelled
          reasons.set(n, ctx.stopReason);
          throw ctx.signal.reason;
        }
        await new Promise((resolve) => setTimeout(resolve, 1_500)); // outlives the TTL: only renewed leases let it complete
        reasons.set(n, ctx.stopReason);
        return n;
      });
      const results = await server.client.enqueueBatch(Array.from({ length: 4 }, (_, n) => ({ kind: "beating", payload: { n }, queue })));
      const ids = results.map((r) => (r as { job: Job }).job.id);
      run(worker);
      await waitFor("all handlers to start", async () => (started.size === 4 ? true : undefined));
      await server.client.cancel(ids[0]!);
      const done = await Promise.all(ids.map((id) => settled(id)));
      assert.deepEqual([...reasons.entries()].sort(), [
        [0, "cancelled"],
        [1, undefined],
        [2, undefined],
        [3, undefined],
      ]);
      assert.deepEqual(done.map((j) => j.state), ["cancelled", "succeeded", "succeeded", "succeeded"]);
      assert.deepEqual(done.slice(1).map((j) => j.result), [1, 2, 3]);
      if (mode === "batched") {
        assert.equal(counts.singles, 0);
        assert.ok(counts.batches.length > 0 && Math.max(...counts.batches) > 1, JSON.stringify(counts.batches));
      } else if (mode === "single") {
        assert.deepEqual(counts.batches, []);
        assert.ok(counts.singles >= 4, String(counts.singles));
      } else {
        assert.equal(counts.batches.length, 1, JSON.stringify(counts.batches));
        assert.ok(counts.singles >= 4, String(counts.singles));
      }
    });
  }

  test("RetryableError(afterMs) re-queues with next_run_at at least afterMs later, then succeeds", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue] });
    const startedAt: number[] = [];
    worker.handle("flaky", async (_job, ctx) => {
      startedAt.push(Date.now());
      if (ctx.attempt === 1) throw new RetryableError("try again later", { afterMs: 1_500 });
      return "ok";
    });
    run(worker);
    const { job } = await server.client.enqueue("flaky", {}, { queue, maxAttempts: 3 });
    const retrying = await waitFor("the retry to be scheduled", async () => {
      const j = await server.client.getJob(job.id);
      return j.state === "queued" && j.attempts === 1 ? j : undefined;
    });
    assert.equal(retrying.last_error, "try again later");
    const failedAt = new Date(retrying.errors?.at(-1)?.at ?? retrying.updated_at).getTime();
    assert.ok(
      new Date(retrying.next_run_at).getTime() >= failedAt + 1_500 - 5,
      `next_run_at ${retrying.next_run_at} is not 1.5 s after the failure at ${retrying.errors?.at(-1)?.at}`,
    );
    const done = await settled(job.id);
    assert.equal(done.state, "succeeded");
    assert.equal(done.attempts, 2);
    assert.ok(startedAt[1]! - startedAt[0]! >= 1_400, `second attempt ${startedAt[1]! - startedAt[0]!} ms after the first`);
  });

  test("PermanentError fails the job for good; other throws are retryable with their message; unknown kinds fail", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue], concurrency: 3 });
    worker.handle("bad", async () => {
      throw new PermanentError("no email address");
    });
    worker.handle("throws-string", () => {
      throw "boom-string"; // eslint-disable-line no-throw-literal
    });
    let plainAttempts = 0;
    worker.handle("throws-error", async () => {
      plainAttempts += 1;
      throw new Error("plain failure");
    });
    run(worker);
    const bad = await server.client.enqueue("bad", {}, { queue, maxAttempts: 5 });
    const str = await server.client.enqueue("throws-string", {}, { queue, maxAttempts: 1 });
    const plain = await server.client.enqueue("throws-error", {}, { queue, maxAttempts: 2 });
    const unknown = await server.client.enqueue("no-such-kind", {}, { queue, maxAttempts: 5 });

    const badJob = await settled(bad.job.id);
    assert.equal(badJob.state, "failed");
    assert.equal(badJob.attempts, 1, "a permanent error spends no more attempts");
    assert.equal(badJob.last_error, "no email address");

    const strJob = await settled(str.job.id);
    assert.equal(strJob.state, "failed");
    assert.equal(strJob.last_error, "boom-string");

    const unknownJob = await settled(unknown.job.id);
    assert.equal(unknownJob.state, "failed");
    assert.equal(unknownJob.attempts, 1);
    assert.match(unknownJob.last_error ?? "", /no handler for kind "no-such-kind"/);

    const plainJob = await settled(plain.job.id, 15_000);
    assert.equal(plainJob.state, "failed");
    assert.equal(plainJob.attempts, 2, "retried until its budget was spent");
    assert.equal(plainAttempts, 2);
    assert.equal(plainJob.last_error, "plain failure");
  });

  test("concurrency is honoured and reached", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue], concurrency: 3 });
    let now = 0;
    let most = 0;
    worker.handle("slow", async () => {
      now += 1;
      most = Math.max(most, now);
      await new Promise((r) => setTimeout(r, 300));
      now -= 1;
    });
    const results = await server.client.enqueueBatch(Array.from({ length: 8 }, (_, i) => ({ kind: "slow", payload: { i }, queue })));
    run(worker);
    for (const r of results) {
      assert.ok(r.status === "created");
      assert.equal((await settled(r.job.id)).state, "succeeded");
    }
    assert.equal(most, 3);
  });

  test("cancelling a running job aborts its handler's signal with reason cancelled", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue], leaseTtlMs: 1_500 });
    const started = deferred<JobContext>();
    const stopped = deferred<{ reason: StopReason | undefined; signalReason: unknown }>();
    worker.handle("long", async (_job, ctx) => {
      started.resolve(ctx);
      await untilAborted(ctx.signal);
      stopped.resolve({ reason: ctx.stopReason, signalReason: ctx.signal.reason });
      throw ctx.signal.reason;
    });
    run(worker);
    const { job } = await server.client.enqueue("long", {}, { queue });
    await started.promise;
    await server.client.cancel(job.id);
    const { reason, signalReason } = await stopped.promise;
    assert.equal(reason, "cancelled");
    assert.ok(signalReason instanceof JobStoppedError);
    assert.equal(signalReason.reason, "cancelled");
    const final = await server.client.getJob(job.id);
    assert.equal(final.state, "cancelled");
  });

  test("a lease lost while the handler runs: signal aborted (lease_lost), stale report refused, the new holder's result stands", async () => {
    const queue = uniqueQueue();
    const logs: Logged[] = [];
    let holdHeartbeats = true;
    const worker = startWorker(
      {
        queues: [queue],
        concurrency: 2,
        leaseTtlMs: 1_000,
        // Heartbeats of attempt 1 are held back until the job has been taken back, and self-fencing
        // is off, so that the stale heartbeat reaches the server and is refused.
        testHooks: { skipHeartbeat: (job) => job.attempts === 1 && holdHeartbeats, disableSelfFence: true },
      },
      logs,
    );
    const firstStopped = deferred<{ reason: StopReason | undefined; token: number }>();
    worker.handle("guarded", async (_job, ctx) => {
      if (ctx.attempt === 1) {
        await untilAborted(ctx.signal);
        firstStopped.resolve({ reason: ctx.stopReason, token: ctx.leaseToken });
        return "stale result";
      }
      return "fresh result";
    });
    run(worker);
    const { job } = await server.client.enqueue("guarded", {}, { queue, maxAttempts: 3 });
    const first = await waitFor("attempt 1 to run", async () => {
      const j = await server.client.getJob(job.id);
      return j.state === "running" ? j : undefined;
    });
    // The lease expires; the reaper (or a claim) takes the job back and attempt 2 runs.
    await waitFor(
      "the job to be taken back",
      async () => {
        const j = await server.client.getJob(job.id);
        return j.lease_token !== first.lease_token ? j : undefined;
      },
      15_000,
    );
    holdHeartbeats = false;
    const { reason, token } = await firstStopped.promise;
    assert.equal(reason, "lease_lost");
    assert.equal(token, first.lease_token);
    await assert.rejects(server.client.complete(job.id, first.lease_token!, "late"), LeaseLostError);
    const final = await settled(job.id);
    assert.equal(final.state, "succeeded");
    assert.equal(final.result, "fresh result");
    assert.equal(final.attempts, 2);
    assert.ok(logs.some((l) => /lease lost/.test(l.message)), JSON.stringify(logs));
  });

  test("self-fencing: heartbeats that do not get through stop the handler before the lease expires, and the job is handed back", async () => {
    const queue = uniqueQueue();
    let firstToken: number | undefined;
    const worker = startWorker({
      queues: [queue],
      leaseTtlMs: 1_000,
      // Every heartbeat of the first claim is lost on the way.
      testHooks: { skipHeartbeat: (job) => (firstToken ??= job.lease_token ?? undefined) === job.lease_token },
    });
    const firstStopped = deferred<{ reason: StopReason | undefined; afterMs: number; token: number }>();
    worker.handle("fenced", async (_job, ctx) => {
      const t0 = Date.now();
      if (ctx.leaseToken === firstToken || firstToken === undefined) {
        await untilAborted(ctx.signal);
        firstStopped.resolve({ reason: ctx.stopReason, afterMs: Date.now() - t0, token: ctx.leaseToken });
        throw ctx.signal.reason;
      }
      return "fresh";
    });
    run(worker);
    const { job } = await server.client.enqueue("fenced", {}, { queue, maxAttempts: 3 });
    const { reason, afterMs, token } = await firstStopped.promise;
    assert.equal(reason, "lease_lost");
    assert.ok(afterMs < 1_000, `stopped ${afterMs} ms after the start, the lease is 1,000 ms`);
    const final = await settled(job.id, 15_000);
    assert.equal(final.state, "succeeded");
    assert.equal(final.result, "fresh");
    assert.notEqual(final.lease_token, token);
    await assert.rejects(server.client.complete(job.id, token, "late"), LeaseLostError);
  });

  test("a job's timeout_ms aborts the handler (reason timeout) and fails the attempt", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue] });
    const reasons: Array<StopReason | undefined> = [];
    worker.handle("hangs", async (_job, ctx) => {
      await untilAborted(ctx.signal);
      reasons.push(ctx.stopReason);
      throw ctx.signal.reason;
    });
    run(worker);
    const { job } = await server.client.enqueue("hangs", {}, { queue, maxAttempts: 1, timeoutMs: 300 });
    const final = await settled(job.id);
    assert.equal(final.state, "failed");
    assert.equal(final.last_error, "timed out after 300 ms");
    assert.deepEqual(reasons, ["timeout"]);
  });

  test("graceful stop: finished handlers report, the rest are aborted and released without spending an attempt", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue], concurrency: 2, graceMs: 700 });
    const started = new Set<string>();
    const reasons = new Map<string, StopReason | undefined>();
    worker.handle("quick", async (job) => {
      started.add(job.id);
      await new Promise((r) => setTimeout(r, 200));
      return "done in grace";
    });
    worker.handle("stubborn", async (job, ctx) => {
      started.add(job.id);
      await untilAborted(ctx.signal);
      reasons.set(job.id, ctx.stopReason);
      throw ctx.signal.reason;
    });
    const quick = await server.client.enqueue("quick", {}, { queue });
    const stubborn = await server.client.enqueue("stubborn", {}, { queue, maxAttempts: 1 });
    const done = run(worker);
    await waitFor("both handlers to start", () => (started.size === 2 ? true : undefined));
    const t0 = Date.now();
    await worker.stop();
    await done;
    assert.ok(Date.now() - t0 < 5_000);
    assert.equal(reasons.get(stubborn.job.id), "shutdown");
    const q = await server.client.getJob(quick.job.id);
    assert.equal(q.state, "succeeded");
    assert.equal(q.result, "done in grace");
    const s = await server.client.getJob(stubborn.job.id);
    assert.equal(s.state, "queued", "handed back");
    assert.equal(s.attempts, 0, "the release spent no attempt");
  });

  test("a claim answered after stop is released at once (its handlers never start)", async () => {
    const queue = uniqueQueue();
    const worker = startWorker({ queues: [queue], pollWaitMs: 3_000 });
    let ran = 0;
    worker.handle("k", async () => {
      ran += 1;
    });
    const done = run(worker);
    // Let the long-poll claim reach the server, then stop while it waits, then give it a job.
    await new Promise((r) => setTimeout(r, 300));
    const stopping = worker.stop();
    const { job } = await server.client.enqueue("k", {}, { queue });
    await stopping;
    await done;
    assert.equal(ran, 0);
    const j = await server.client.getJob(job.id);
    assert.equal(j.state, "queued");
    assert.equal(j.attempts, 0);
  });

  test("SIGTERM in a worker process: installSignalHandlers stops it, the job is handed back, the process exits by itself", async () => {
    const queue = uniqueQueue();
    const { job } = await server.client.enqueue("waits", {}, { queue, maxAttempts: 1 });
    const index = join(dirname(fileURLToPath(import.meta.url)), "..", "src", "index.js");
    const program = `
      const { Worker } = await import(${JSON.stringify(index)});
      const worker = new Worker({ baseUrl: process.env.URL, token: process.env.TOKEN, queues: [process.env.QUEUE],
                                  graceMs: 300, pollWaitMs: 500, logger: {} });
      worker.handle("waits", async (job, ctx) => {
        console.log("started " + job.id);
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
        console.log("stopped " + ctx.stopReason);
        throw ctx.signal.reason;
      });
      worker.installSignalHandlers();
      await worker.run();
      console.log("done");
    `;
    const child = spawn(process.execPath, ["--input-type=module", "-e", program], {
      env: { ...process.env, URL: server.baseUrl, TOKEN: server.token, QUEUE: queue },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    try {
      await waitFor("the handler to start", () => (out.includes(`started ${job.id}`) ? true : undefined));
      child.kill("SIGTERM");
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r("still running"), 10_000))]);
      assert.equal(code, 0, `the worker process did not exit by itself: ${code}; output: ${out}`);
    } finally {
      child.kill("SIGKILL");
    }
    assert.match(out, /stopped shutdown\ndone/);
    const j = await server.client.getJob(job.id);
    assert.equal(j.state, "queued");
    assert.equal(j.attempts, 0);
  });

  test("run({ signal }) stops when the signal is aborted", async () => {
    const queue = uniqueQueue();
    const worker = new Worker({ baseUrl: server.baseUrl, token: server.token, queues: [queue], pollWaitMs: 500, logger: {} });
    const controller = new AbortController();
    const done = worker.run({ signal: controller.signal });
    setTimeout(() => controller.abort(), 200);
    await done;
    assert.equal(worker.activeCount, 0);
  });
});

// Durable steps, sleeps and signals (docs/durable.md, "Over HTTP"). Each test has its own queue
// and its own worker, stopped by the test itself: they run at the same time.
describe("durable steps, sleeps and signals", { concurrency: true }, () => {
  async function withWorker(worker: Worker, body: () => Promise<void>): Promise<void> {
    const done = worker.run();
    try {
      await body();
    } finally {
      await worker.stop({ graceMs: 0 });
      await done;
    }
  }

  async function inState(id: string, states: string[], timeoutMs = 15_000): Promise<Job> {
    return waitFor(
      `job ${id} to be ${states.join("/")}`,
      async () => {
        const job = await server.client.getJob(id);
        return states.includes(job.state) ? job : undefined;
      },
      timeoutMs,
    );
  }

  const durableWorker = (queue: string, options: Partial<WorkerOptions> = {}) =>
    new Worker({ client: server.client, queues: [queue], pollWaitMs: 500, logger: {}, ...options });

  test("recorded steps do not run again: a third step failing on attempt 1 is the only one retried", async () => {
    const queue = uniqueQueue();
    const worker = durableWorker(queue);
    const runs = { one: 0, two: 0, three: 0, again: 0 };
    worker.handle("three", async (_job, ctx) => {
      const a = await ctx.step("one", () => (runs.one++, { charge: "ch_1" }));
      const b = await ctx.step("two", async () => (runs.two++, [1, 2]));
      const c = await ctx.step("three", () => {
        runs.three++;
        if (ctx.attempt === 1) throw new RetryableError("the mail server is down", { afterMs: 0 });
        return "sent";
      });
      assert.deepEqual(await ctx.step("one", () => (runs.again++, "other")), a, "a name is recorded once");
      return { a, b, c };
    });
    const { job } = await server.client.enqueue("three", {}, { queue });
    await withWorker(worker, async () => {
      const done = await inState(job.id, ["succeeded", "failed"]);
      assert.equal(done.state, "succeeded");
      assert.deepEqual(done.result, { a: { charge: "ch_1" }, b: [1, 2], c: "sent" });
      assert.equal(done.attempts, 2);
    });
    assert.deepEqual(runs, { one: 1, two: 1, three: 2, again: 0 });
    const steps = await server.client.steps(job.id);
    assert.deepEqual(steps.map((st) => [st.name, st.attempt]), [["one", 1], ["two", 1], ["three", 2]]);
  });

  test("a sleep hands the job back (queued, attempt not spent, next_run_at = until) and is not repeated", async () => {
    const queue = uniqueQueue();
    const worker = durableWorker(queue);
    const tokens: number[] = [];
    const asked: number[] = [];
    const suspended = deferred<JobSuspendedError>();
    worker.handle("sleepy", async (_job, ctx) => {
      tokens.push(ctx.leaseToken);
      const before = await ctx.step("before", () => tokens.length);
      asked.push(Date.now() + 1_500);
      try {
        await ctx.sleep(1_500);
      } catch (error) {
        if (error instanceof JobSuspendedError) suspended.resolve(error);
        throw error;
      }
      return { before, runs: tokens.length };
    });
    const { job } = await server.client.enqueue("sleepy", {}, { queue });
    await withWorker(worker, async () => {
      const error = await suspended.promise;
      assert.equal(error.state, "sleeping");
      const parked = await server.client.getJob(job.id);
      assert.equal(parked.state, "queued");
      assert.equal(parked.attempts, 0, "the attempt was handed back");
      assert.ok(Math.abs(Date.parse(parked.next_run_at) - asked[0]!) < 1_000, `${parked.next_run_at} vs ${new Date(asked[0]!).toISOString()}`);
      const done = await inState(job.id, ["succeeded", "failed"]);
      assert.equal(done.state, "succeeded");
      assert.deepEqual(done.result, { before: 1, runs: 2 }, "the first run's step; the sleep not repeated");
      assert.equal(done.attempts, 1);
    });
    assert.equal(tokens.length, 2);
    assert.ok(tokens[1]! > tokens[0]!);
    const names = (await server.client.steps(job.id)).map((st) => st.name);
    assert.deepEqual(names.filter((n) => n.startsWith("faultline:sleep:")), ["faultline:sleep:1"]);
  });

  test("a wait parks the job in waiting until its signal; a second signal of the name is not kept", async () => {
    const queue = uniqueQueue();
    const worker = durableWorker(queue);
    let runs = 0;
    worker.handle("refund", async (_job, ctx) => {
      runs++;
      const charge = await ctx.step("charge", () => "ch_9");
      const refund = await ctx.waitForSignal<{ cents: number }>("refund", 600_000);
      return { charge, refund, runs };
    });
    const { job } = await server.client.enqueue("refund", {}, { queue });
    await withWorker(worker, async () => {
      const waiting = await inState(job.id, ["waiting"]);
      const waitingFor = (waiting as Job & { waiting_for?: { signal: string; until: string } | null }).waiting_for;
      assert.equal(waitingFor?.signal, "refund");
      assert.ok(Date.parse(waitingFor!.until) > Date.now() + 500_000);
      assert.equal(waiting.attempts, 0);
      assert.equal(await server.client.sendSignal(job.id, "refund", { cents: 1200 }), true);
      assert.equal(await server.client.sendSignal(job.id, "refund", { cents: 1 }), false);
      const done = await inState(job.id, ["succeeded", "failed"]);
      assert.equal(done.state, "succeeded");
      assert.deepEqual(done.result, { charge: "ch_9", refund: { cents: 1200 }, runs: 2 });
    });
  });

  test("a signal sent before the wait is there at once; a wait that timed out answers undefined", async () => {
    const queue = uniqueQueue();
    const worker = durableWorker(queue);
    let runs = 0;
    worker.handle("early", async (_job, ctx) => {
      runs++;
      const got = await ctx.waitForSignal("go", 600_000);
      const late = await ctx.waitForSignal("late", 0);
      return { got, late: late === undefined ? "timed out" : late };
    });
    const { job } = await server.client.enqueue("early", {}, { queue });
    assert.equal(await server.client.sendSignal(job.id, "go", ["early"]), true);
    assert.equal(await server.client.sendSignal(job.id, "go"), false);
    await withWorker(worker, async () => {
      const done = await inState(job.id, ["succeeded", "failed"]);
      assert.deepEqual([done.state, done.result], ["succeeded", { got: ["early"], late: "timed out" }]);
    });
    assert.equal(runs, 1);
  });

  test("a stale lease records no step: the handler is stopped (lease_lost), the next attempt records it", async () => {
    const queue = uniqueQueue();
    let holdHeartbeats = true;
    const worker = durableWorker(queue, {
      concurrency: 1,
      leaseTtlMs: 1_000,
      testHooks: { skipHeartbeat: (job) => job.attempts === 1 && holdHeartbeats, disableSelfFence: true },
    });
    const ran: number[] = [];
    const stale: Array<[number, StopReason | undefined, string]> = [];
    worker.handle("stale", async (_job, ctx) => {
      if (ctx.attempt === 1) {
        await inState(ctx.jobId, ["queued"]); // reaped: the lease is gone
        holdHeartbeats = false;
        try {
          await ctx.step("s", () => (ran.push(ctx.leaseToken), ctx.leaseToken));
        } catch (error) {
          stale.push([ctx.leaseToken, ctx.stopReason, error instanceof LeaseLostError ? "LeaseLostError" : String(error)]);
          throw error;
        }
        throw new Error("the stale step was recorded");
      }
      return ctx.step("s", () => (ran.push(ctx.leaseToken), ctx.leaseToken));
    });
    const { job } = await server.client.enqueue("stale", {}, { queue });
    await withWorker(worker, async () => {
      const done = await inState(job.id, ["succeeded", "failed"], 20_000);
      assert.equal(done.state, "succeeded");
      const first = stale[0]![0];
      assert.deepEqual(stale, [[first, "lease_lost", "LeaseLostError"]]);
      assert.ok((done.result as number) > first);
      assert.deepEqual(ran, [first, done.result], "the stale run's step ran and was not recorded");
      const steps = await server.client.steps(job.id);
      assert.deepEqual(steps.map((st) => [st.name, st.lease_token]), [["s", done.result]]);
      assert.equal(done.errors?.length, 1, "the expired lease; no report from the stale run");
    });
  });

  test("the durable routes from the client", async () => {
    const queue = uniqueQueue();
    const { job } = await server.client.enqueue("raw", {}, { queue });
    const [claimed] = await server.client.claim({ worker_id: "ts-raw", queues: [queue], lease_ttl_ms: 5_000 });
    const token = claimed!.lease_token!;
    const first = await server.client.recordStep(job.id, token, "a b/c", { n: 1 });
    const again = await server.client.recordStep(job.id, token, "a b/c", { n: 2 });
    assert.deepEqual([first.created, first.step.result, again.created, again.step.result], [true, { n: 1 }, false, { n: 1 }]);
    await assert.rejects(server.client.recordStep(job.id, token + 1000, "other", 1), LeaseLostError);
    await assert.rejects(server.client.recordStep(job.id, token, "faultline:mine", 1), InvalidInputError);
    assert.equal((await server.client.sleepJob(job.id, token, new Date("2000-01-01T00:00:00Z"), 1)).state, "over");
    assert.equal((await server.client.waitForSignal(job.id, token, "never", 0)).outcome, "timed_out");
    const sleeping = await server.client.sleepJob(job.id, token, new Date(Date.now() + 3_600_000), 2);
    assert.equal(sleeping.state, "sleeping");
    await assert.rejects(server.client.heartbeat(job.id, token), LeaseLostError, "the sleep gave the lease back");
    await server.client.cancel(job.id);
  });
});
