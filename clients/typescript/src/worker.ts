import { hostname } from "node:os";
import { randomBytes } from "node:crypto";

import { Client, type ClientOptions } from "./client.js";
import {
  ApiError,
  FaultlineConnectionError,
  FaultlineError,
  InvalidInputError,
  LeaseLostError,
  NotFoundError,
  PermanentError,
  RetryableError,
  UnavailableError,
} from "./errors.js";
import type { CompleteItem, Job } from "./types.js";

/**
 * Why a handler was told to stop: its lease was lost (or could not be renewed in time), its job
 * was cancelled, the worker's shutdown grace ran out, or the job's `timeout_ms` passed.
 */
export type StopReason = "lease_lost" | "cancelled" | "shutdown" | "timeout";

/** The `reason` of an aborted {@link JobContext.signal}. */
export class JobStoppedError extends FaultlineError {
  readonly reason: StopReason;
  constructor(reason: StopReason, message: string) {
    super(message);
    this.reason = reason;
  }
}

/**
 * Thrown by `ctx.sleep`, `ctx.sleepUntil` and `ctx.waitForSignal` when the server took the job
 * back until a time or a signal: let it propagate out of the handler. The worker reports nothing
 * for this run (even if the handler swallows it); the job runs again from the top at that time or
 * when the signal comes, its recorded steps returning at once, and its attempt is not spent.
 */
export class JobSuspendedError extends FaultlineError {
  /** `sleeping` (until a time) or `waiting` (for a signal, at most until a time). */
  readonly state: "sleeping" | "waiting";
  /** When the job runs again (a sleep), or when its wait times out. */
  readonly until: string | undefined;
  /** The signal waited for (`waiting`). */
  readonly signalName: string | undefined;
  constructor(state: "sleeping" | "waiting", message: string, until?: string, signalName?: string) {
    super(message);
    this.state = state;
    this.until = until;
    this.signalName = signalName;
  }
}

/** What a handler knows about its attempt. */
export interface JobContext {
  readonly jobId: string;
  readonly kind: string;
  readonly queue: string;
  /** This attempt's number (1-based). */
  readonly attempt: number;
  readonly maxAttempts: number;
  /** The fencing token of this attempt's lease: use it to make side effects idempotent. */
  readonly leaseToken: number;
  readonly workerId: string;
  /**
   * Aborted when the handler must stop: the lease was lost (another worker may run the job), the
   * job was cancelled, the shutdown grace ran out (the job is handed back), or the job's
   * `timeout_ms` passed (a retryable failure). `signal.reason` is a {@link JobStoppedError};
   * {@link stopReason} says which. A handler that then throws reports nothing (the job is handed
   * back on shutdown); one that still returns a result has it reported, and the lease token
   * decides whether it lands. A handler that has not settled 500 ms after the abort is left
   * behind: its slot is freed and its outcome ignored.
   */
  readonly signal: AbortSignal;
  /** Set when {@link signal} is aborted. */
  readonly stopReason: StopReason | undefined;

  /**
   * Run `fn` as the durable step `name` of this job, once (docs/durable.md). If the job recorded a
   * step of that name (in this run or an earlier one), its recorded result is returned and `fn`
   * does not run; otherwise `fn` runs and its result (JSON; `undefined` records `null`) is
   * recorded under this attempt's lease, and the recorded result is returned (the first, should
   * the name have been recorded meanwhile). A step that throws records nothing. Names are 1–255
   * bytes without control characters; `faultline:…` is reserved. Throws {@link LeaseLostError}
   * when the lease was lost (nothing recorded; the handler is stopped like any lease loss) and
   * {@link PermanentError} for a bad name or a result that is not JSON (or over the server's limit).
   */
  step<T>(name: string, fn: () => T | Promise<T>): Promise<T>;
  /** {@link sleepUntil} `ms` from now (from the first run that asked: see there). */
  sleep(ms: number): Promise<void>;
  /**
   * Sleep durably until `until`: the job gives back its worker slot and lease and is claimed again
   * then, without spending an attempt. Until then this throws {@link JobSuspendedError} (let it
   * propagate: nothing is reported for this run); when the job runs again, the same call (the
   * handler's n-th sleep) resolves, keeping the time recorded the first time.
   */
  sleepUntil(until: Date | string): Promise<void>;
  /**
   * Wait for the signal `name` (`client.sendSignal(jobId, name, payload)`), at most `timeoutMs`
   * from the first call: its payload once it came (a signal sent before the wait counts; `null`
   * for one sent without a payload), `undefined` once the timeout passed. Until then the job parks
   * in `waiting` and this throws {@link JobSuspendedError} (let it propagate); the signal or the
   * timeout runs the job again from the top, and this same call then answers.
   */
  waitForSignal<P = unknown>(name: string, timeoutMs: number): Promise<P | null | undefined>;
}

/** A handler: its return value is the job's result (any JSON; `undefined` for none). */
export type Handler<P = any, R = unknown> = (job: Job<P>, ctx: JobContext) => R | Promise<R>;

/** Where the worker writes what happens. Missing levels are silent. */
export interface Logger {
  debug?(message: string, details?: Record<string, unknown>): void;
  info?(message: string, details?: Record<string, unknown>): void;
  warn?(message: string, details?: Record<string, unknown>): void;
  error?(message: string, details?: Record<string, unknown>): void;
}

/** Hooks for tests of this package; not part of the supported API. */
export interface WorkerTestHooks {
  /** Return true to skip this heartbeat (as if it never reached the server). */
  skipHeartbeat?(job: Job): boolean;
  /** Never self-fence (so that a stale heartbeat reaches the server and is refused). */
  disableSelfFence?: boolean;
}

export interface WorkerOptions {
  /** A client to use; or `baseUrl` (and `token`, `timeoutMs`) to make one. */
  client?: Client;
  baseUrl?: string;
  token?: string;
  timeoutMs?: number;
  /** The queues to claim from (at least one). */
  queues: string[];
  /** Most handlers running at once (default 10). */
  concurrency?: number;
  /** Lease length asked for on each claim (default 30,000 ms; the server accepts 1,000 to 3,600,000). */
  leaseTtlMs?: number;
  /** Time between heartbeats of a running job (default a third of the TTL). */
  heartbeatIntervalMs?: number;
  /** This worker's name in leases (default `<hostname>-<pid>-<random>`). */
  workerId?: string;
  /** How long an empty claim waits on the server for a job (long poll; default 5,000 ms). */
  pollWaitMs?: number;
  /** On stop, how long running handlers may finish before they are aborted and their jobs handed back (default 30,000 ms). */
  graceMs?: number;
  /**
   * Coalesce successful completions into `POST /v1/jobs/complete` batches (default true): a
   * completion waits at most `completionLingerMs` (or until `completionBatchSize` are pending),
   * each still fenced by its own lease token. False sends one `complete` per job.
   */
  batchCompletions?: boolean;
  /** Longest a completion waits for others to go with it (default 3 ms). */
  completionLingerMs?: number;
  /** Most completions in one batch, 1 to 1,000 (default 500). */
  completionBatchSize?: number;
  /**
   * Renew the leases of all running jobs together (default true): every `heartbeatIntervalMs`, one
   * `POST /v1/jobs/heartbeat` per 1,000 jobs, each fenced by its own lease token. False (or a
   * server without that route) sends one heartbeat per job.
   */
  batchHeartbeats?: boolean;
  /** Default: warnings and errors to the console. */
  logger?: Logger;
  /** @internal */
  testHooks?: WorkerTestHooks;
}

const consoleLogger: Logger = {
  warn: (message, details) => console.warn(`faultline worker: ${message}`, details ?? ""),
  error: (message, details) => console.error(`faultline worker: ${message}`, details ?? ""),
};

/** One running attempt. */
interface Attempt {
  job: Job;
  id: string;
  token: number;
  controller: AbortController;
  stopReason: StopReason | undefined;
  /** Stopped by self-fencing (heartbeats did not get through in time): handed back, if the server still lets us. */
  selfFenced: boolean;
  /** Resolves STOP_GRACE_MS after the abort: a handler not settled by then is left behind. */
  stopGraceOver: Promise<void>;
  endStopGrace: () => void;
  /** Local time (ms) by which the lease has surely expired, by what we last heard. */
  leaseDeadline: number;
  /** Local time of the last renewal (claim or heartbeat) known to have taken effect. */
  renewedAt: number;
  /** The outcome is decided (the handler settled, timed out or was left behind). */
  decided: boolean;
  /** Heartbeats go on (until the outcome is reported, or the lease is known gone). */
  heartbeating: boolean;
  heartbeatTimer: ReturnType<typeof setTimeout> | undefined;
  fenceTimer: ReturnType<typeof setTimeout> | undefined;
  /** Settles when everything for this attempt (handler, report or release) is over. */
  finished: Promise<void>;
  /** A sleep or a wait handed the job back: nothing is reported for this run. */
  suspended: boolean;
  /** Recorded step results by name (read at the first step of the run), plus this run's records. */
  steps: Map<string, unknown> | undefined;
  /** Sleeps asked for so far in this run (the n-th sleep is `seq` n). */
  sleeps: number;
}

/** How long a handler has to return once told to stop (as the Rust worker). */
const STOP_GRACE_MS = 500;

type Outcome =
  | { type: "complete"; result: unknown }
  | { type: "fail"; error: string; retryable: boolean; retryAfterMs?: number }
  | { type: "stopped" };

/** What became of a completion sent in a batch; `error`: the batch got no usable answer. */
type BatchOutcome = { outcome: "completed" | "lease_lost" | "invalid" | "error"; message?: string };

/**
 * Coalesces successful completions into `POST /v1/jobs/complete` batches. A batch goes out
 * `lingerMs` after its first completion, or at once when `maxBatch` are pending; several may be
 * in flight. A batch that gets no usable answer resolves each of its completions with `error`:
 * the worker then reports that job on its own, with the single complete and its retries.
 */
class Completions {
  enabled = true;
  #pending: Array<{ item: CompleteItem; resolve: (outcome: BatchOutcome) => void }> = [];
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly client: Client,
    private readonly lingerMs: number,
    private readonly maxBatch: number,
    private readonly log: Logger,
  ) {}

  submit(id: string, leaseToken: number, result: unknown): Promise<BatchOutcome> {
    return new Promise((resolve) => {
      const item: CompleteItem = result === undefined ? { id, lease_token: leaseToken } : { id, lease_token: leaseToken, result };
      this.#pending.push({ item, resolve });
      if (this.#pending.length >= this.maxBatch) this.#flush();
      else this.#timer ??= setTimeout(() => this.#flush(), this.lingerMs);
    });
  }

  #flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const batch = this.#pending;
    this.#pending = [];
    if (batch.length > 0) void this.#send(batch);
  }

  async #send(batch: Array<{ item: CompleteItem; resolve: (outcome: BatchOutcome) => void }>): Promise<void> {
    try {
      const outcomes = await this.client.completeBatch(batch.map((b) => b.item));
      if (outcomes.length !== batch.length) throw new FaultlineError(`${outcomes.length} outcomes for ${batch.length} completions`);
      batch.forEach((b, i) => {
        const o = outcomes[i]!;
        b.resolve(o.message == null ? { outcome: o.outcome } : { outcome: o.outcome, message: o.message });
      });
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
        // A server without POST /v1/jobs/complete: one by one from now on.
        this.enabled = false;
        this.log.warn?.(`the server has no POST /v1/jobs/complete (${describe(error)}); completions go one by one`);
      } else {
        this.log.warn?.(`a batch of ${batch.length} completions failed (${describe(error)}); each is reported on its own`);
      }
      for (const b of batch) b.resolve({ outcome: "error", message: describe(error) });
    }
  }
}

/**
 * Runs handlers for the jobs it claims over HTTP, with the guarantees of a Rust worker: every
 * report is fenced by the lease token, leases are renewed at a third of the TTL, a handler is
 * aborted when its lease is lost or its job cancelled, and a graceful stop hands back what it
 * cannot finish.
 */
export class Worker {
  readonly client: Client;
  readonly workerId: string;
  readonly queues: string[];
  readonly concurrency: number;
  readonly leaseTtlMs: number;
  readonly heartbeatIntervalMs: number;
  readonly pollWaitMs: number;
  readonly graceMs: number;
  readonly batchCompletions: boolean;
  readonly batchHeartbeats: boolean;

  /** The batched heartbeats are in use (false once the server showed it has no batch route). */
  #heartbeatBatches = false;
  #batchTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #completions: Completions | undefined;
  readonly #handlers = new Map<string, Handler>();
  readonly #active = new Set<Attempt>();
  readonly #log: Logger;
  readonly #hooks: WorkerTestHooks;
  #running = false;
  #stopping = false;
  #graceOverride: number | undefined;
  #wake: (() => void) | undefined;
  #stopController = new AbortController();
  #runPromise: Promise<void> | undefined;
  readonly #signalCleanups = new Set<() => void>();

  constructor(options: WorkerOptions) {
    if (options.client) {
      this.client = options.client;
    } else if (options.baseUrl) {
      const clientOptions: ClientOptions = { baseUrl: options.baseUrl };
      if (options.token !== undefined) clientOptions.token = options.token;
      if (options.timeoutMs !== undefined) clientOptions.timeoutMs = options.timeoutMs;
      this.client = new Client(clientOptions);
    } else {
      throw new FaultlineError("Worker: give `client` or `baseUrl`");
    }
    if (!Array.isArray(options.queues) || options.queues.length === 0) {
      throw new FaultlineError("Worker: `queues` must name at least one queue");
    }
    this.queues = [...options.queues];
    this.concurrency = positiveInt("concurrency", options.concurrency ?? 10);
    this.leaseTtlMs = positiveInt("leaseTtlMs", options.leaseTtlMs ?? 30_000);
    if (this.leaseTtlMs < 1_000 || this.leaseTtlMs > 3_600_000) {
      throw new FaultlineError(`Worker: leaseTtlMs must be 1,000 to 3,600,000 (the server's range), got ${this.leaseTtlMs}`);
    }
    this.heartbeatIntervalMs = positiveInt("heartbeatIntervalMs", options.heartbeatIntervalMs ?? Math.max(1, Math.floor(this.leaseTtlMs / 3)));
    this.pollWaitMs = nonNegativeInt("pollWaitMs", options.pollWaitMs ?? 5_000);
    this.graceMs = nonNegativeInt("graceMs", options.graceMs ?? 30_000);
    this.workerId = options.workerId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
    this.#log = options.logger ?? consoleLogger;
    this.#hooks = options.testHooks ?? {};
    this.batchCompletions = options.batchCompletions ?? true;
    this.batchHeartbeats = options.batchHeartbeats ?? true;
    const lingerMs = nonNegativeInt("completionLingerMs", options.completionLingerMs ?? 3);
    const batchSize = positiveInt("completionBatchSize", options.completionBatchSize ?? 500);
    if (batchSize > 1000) throw new FaultlineError(`Worker: completionBatchSize must be 1 to 1,000, got ${batchSize}`);
    this.#completions = this.batchCompletions ? new Completions(this.client, lingerMs, batchSize, this.#log) : undefined;
  }

  /** Register the handler of `kind` (replacing any earlier one). */
  handle<P = any, R = unknown>(kind: string, handler: Handler<P, R>): this {
    if (typeof handler !== "function") throw new FaultlineError(`Worker.handle(${JSON.stringify(kind)}): the handler must be a function`);
    this.#handlers.set(kind, handler as Handler);
    return this;
  }

  /** How many handlers are running now. */
  get activeCount(): number {
    return this.#active.size;
  }

  /**
   * Claim and run jobs until {@link stop} is called or `signal` is aborted; resolves once the
   * worker has stopped gracefully (running handlers finished, or aborted and their jobs handed
   * back after `graceMs`).
   */
  run(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#running) throw new FaultlineError("Worker.run: already running");
    this.#running = true;
    this.#stopping = false;
    this.#stopController = new AbortController();
    this.#graceOverride = undefined;
    const { signal } = options;
    const onAbort = () => void this.stop();
    if (signal?.aborted) this.#stopping = true;
    else signal?.addEventListener("abort", onAbort, { once: true });
    this.#runPromise = this.#loop().finally(() => {
      signal?.removeEventListener("abort", onAbort);
      for (const remove of [...this.#signalCleanups]) remove();
      this.#running = false;
    });
    return this.#runPromise;
  }

  /**
   * Stop: claim nothing more, let running handlers finish within `graceMs` (or the given
   * `graceMs`), then abort them and hand their jobs back. Resolves when the worker has stopped.
   */
  stop(options: { graceMs?: number } = {}): Promise<void> {
    if (options.graceMs !== undefined) {
      this.#graceOverride = Math.min(this.#graceOverride ?? Infinity, Math.max(0, options.graceMs));
    }
    if (!this.#stopping) this.#log.info?.("stopping", { workerId: this.workerId });
    this.#stopping = true;
    this.#stopController.abort();
    this.#wake?.();
    return this.#runPromise ?? Promise.resolve();
  }

  /**
   * Stop gracefully on SIGTERM or SIGINT (a second signal stops at once: handlers are aborted
   * and their jobs handed back). Returns a function that removes the handlers; they are also
   * removed when {@link run} ends, so that the process can exit.
   */
  installSignalHandlers(signals: NodeJS.Signals[] = ["SIGTERM", "SIGINT"]): () => void {
    let received = 0;
    const onSignal = (name: NodeJS.Signals) => {
      received += 1;
      this.#log.info?.(`${name} received: ${received === 1 ? `stopping (grace ${this.graceMs} ms)` : "stopping now"}`);
      void this.stop(received === 1 ? {} : { graceMs: 0 });
    };
    for (const s of signals) process.on(s, onSignal);
    const remove = () => {
      for (const s of signals) process.off(s, onSignal);
      this.#signalCleanups.delete(remove);
    };
    this.#signalCleanups.add(remove);
    return remove;
  }

  // ---- the claim loop ------------------------------------------------------------------------

  async #loop(): Promise<void> {
    this.#log.info?.("worker started", { workerId: this.workerId, queues: this.queues, concurrency: this.concurrency });
    this.#heartbeatBatches = this.batchHeartbeats;
    if (this.#heartbeatBatches) this.#scheduleBatch(this.heartbeatIntervalMs);
    try {
      await this.#claimLoop();
      await this.#drain();
    } finally {
      this.#heartbeatBatches = false;
      clearTimeout(this.#batchTimer);
      this.#batchTimer = undefined;
    }
    this.#log.info?.("worker stopped", { workerId: this.workerId });
  }

  async #claimLoop(): Promise<void> {
    let failures = 0;
    while (!this.#stopping) {
      const free = this.concurrency - this.#active.size;
      if (free <= 0) {
        await this.#waitForSlotOrStop();
        continue;
      }
      let jobs: Job[];
      try {
        // Not aborted by stop: a claim the server made must be answered so its jobs can be
        // handed back at once (an abandoned one would hold them until their leases expire).
        jobs = await this.client.claim({
          worker_id: this.workerId,
          queues: this.queues,
          max: Math.min(free, 1000),
          wait_ms: this.#stopping ? 0 : this.pollWaitMs,
          lease_ttl_ms: this.leaseTtlMs,
        });
        failures = 0;
      } catch (error) {
        failures += 1;
        const delay = Math.min(30_000, 250 * 2 ** Math.min(failures - 1, 7)) * (0.5 + Math.random() / 2);
        const level = error instanceof InvalidInputError || error instanceof ApiError && error.status === 401 ? "error" : "warn";
        this.#log[level]?.(`claim failed (retrying in ${Math.round(delay)} ms): ${describe(error)}`, { workerId: this.workerId });
        await sleep(delay, this.#stopController.signal);
        continue;
      }
      const receivedAt = Date.now();
      if (this.#stopping) {
        await Promise.all(jobs.map((job) => this.#releaseUnstarted(job, receivedAt)));
        break;
      }
      for (const job of jobs) this.#start(job, receivedAt);
    }
  }

  #waitForSlotOrStop(): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = () => {
        this.#wake = undefined;
        resolve();
      };
    });
  }

  async #releaseUnstarted(job: Job, receivedAt: number): Promise<void> {
    const token = job.lease_token;
    if (typeof token !== "number") return;
    try {
      await this.#withRetries("release", job.id, receivedAt + this.leaseTtlMs, () => this.client.release(job.id, token));
    } catch (error) {
      this.#log.error?.(`release refused: ${describe(error)}`, { jobId: job.id });
    }
  }

  /** Graceful stop: wait for handlers up to the grace, then abort and hand back the rest. */
  async #drain(): Promise<void> {
    if (this.#active.size === 0) return;
    const grace = this.#graceOverride ?? this.graceMs;
    const all = () => Promise.all([...this.#active].map((a) => a.finished));
    let timer: ReturnType<typeof setTimeout> | undefined;
    let forced: () => void = () => undefined;
    const forcedStop = new Promise<"grace">((resolve) => {
      forced = () => resolve("grace");
      timer = setTimeout(forced, grace);
    });
    // A later stop({ graceMs: 0 }) (a second signal) cuts the grace short.
    const poll = setInterval(() => {
      if (this.#graceOverride !== undefined && this.#graceOverride < grace) forced();
    }, 50);
    try {
      const first = await Promise.race([all().then(() => "done" as const), forcedStop]);
      if (first === "done") return;
      const unfinished = [...this.#active].filter((a) => !a.decided);
      this.#log.warn?.(`shutdown grace over: aborting ${unfinished.length} handler(s); their jobs are handed back`, { workerId: this.workerId });
      for (const a of unfinished) this.#abort(a, "shutdown", "the worker is shutting down: the job is handed back");
      // Each attempt now reports (a handler that still returned a result) or releases its job.
      await all();
    } finally {
      clearTimeout(timer);
      clearInterval(poll);
    }
  }

  // ---- one attempt ---------------------------------------------------------------------------

  #start(job: Job, receivedAt: number): void {
    if (typeof job.lease_token !== "number") {
      this.#log.error?.("claimed job has no lease_token; skipped", { jobId: job.id });
      return;
    }
    let endStopGrace: () => void = () => undefined;
    const stopGraceOver = new Promise<void>((resolve) => (endStopGrace = resolve));
    // The lease was granted just before the claim's answer came back: its TTL runs from about then.
    const attempt: Attempt = {
      job,
      id: job.id,
      token: job.lease_token,
      controller: new AbortController(),
      stopReason: undefined,
      selfFenced: false,
      stopGraceOver,
      endStopGrace,
      leaseDeadline: receivedAt + this.leaseTtlMs,
      renewedAt: receivedAt,
      decided: false,
      heartbeating: true,
      heartbeatTimer: undefined,
      fenceTimer: undefined,
      finished: Promise.resolve(),
      suspended: false,
      steps: undefined,
      sleeps: 0,
    };
    this.#active.add(attempt);
    // With batched heartbeats, the worker's batch renews this lease along with the others.
    if (!this.#heartbeatBatches) this.#scheduleHeartbeat(attempt, this.heartbeatIntervalMs);
    this.#armFence(attempt);
    attempt.finished = this.#execute(attempt)
      .catch((error) => this.#log.error?.(`unexpected worker error: ${describe(error)}`, { jobId: attempt.id }))
      .finally(() => {
        this.#stopHeartbeats(attempt);
        clearTimeout(attempt.fenceTimer);
        this.#active.delete(attempt);
        this.#wake?.();
      });
  }

  async #execute(a: Attempt): Promise<void> {
    const handler = this.#handlers.get(a.job.kind);
    let outcome: Outcome;
    if (!handler) {
      const known = [...this.#handlers.keys()].map((k) => JSON.stringify(k)).join(", ") || "none";
      outcome = {
        type: "fail",
        error: `no handler for kind ${JSON.stringify(a.job.kind)} on worker ${this.workerId} (handlers: ${known})`,
        retryable: false,
      };
    } else {
      const ctx = this.#context(a);
      const ran: Promise<Outcome> = (async () => handler(a.job, ctx))().then(jsonOutcome, failureOf);
      const racers: Array<Promise<Outcome>> = [ran, a.stopGraceOver.then((): Outcome => ({ type: "stopped" }))];
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeoutMs = a.job.timeout_ms;
      if (typeof timeoutMs === "number" && timeoutMs > 0) {
        racers.push(
          new Promise<Outcome>((resolve) => {
            timer = setTimeout(() => {
              const error = `timed out after ${timeoutMs} ms`;
              this.#abort(a, "timeout", error);
              resolve({ type: "fail", error, retryable: true });
            }, timeoutMs);
          }),
        );
      }
      outcome = await Promise.race(racers);
      clearTimeout(timer);
      ran.then(() => {
        if (outcome.type === "stopped") this.#log.warn?.(`a handler left behind after its stop (${a.stopReason}) has now returned; its outcome is ignored`, { jobId: a.id });
      }, () => undefined);
    }
    a.decided = true;
    clearTimeout(a.fenceTimer);
    if (a.suspended) return; // a sleep or a wait handed the job back: nothing to report

    // Once stopped, a failure is the stop's consequence: nothing is charged to the job. A result
    // is still reported under the lease, and the token decides whether it lands.
    if (outcome.type === "fail" && a.stopReason !== undefined && a.stopReason !== "timeout") outcome = { type: "stopped" };
    if (outcome.type === "stopped") {
      if (a.stopReason === "shutdown" || a.selfFenced) {
        await this.#withRetries("release", a.id, () => a.leaseDeadline, () => this.client.release(a.id, a.token)).catch((error) =>
          this.#log.error?.(`release refused: ${describe(error)}`, { jobId: a.id }),
        );
      } else {
        this.#log.info?.(`handler stopped (${a.stopReason}); nothing reported`, { jobId: a.id, leaseToken: a.token });
      }
      return;
    }
    if (outcome.type === "complete" && this.#completions?.enabled) {
      const batched = await this.#completions.submit(a.id, a.token, outcome.result);
      if (batched.outcome === "completed") return;
      if (batched.outcome === "lease_lost") {
        // As a 409 on a single complete: nothing changed; the handler is done.
        this.#log[a.stopReason === "cancelled" ? "debug" : "warn"]?.(`complete refused, lease lost (the report changed nothing): ${batched.message ?? "lease_lost"}`, { jobId: a.id });
        return;
      }
      if (batched.outcome === "invalid") {
        await this.#withRetries("fail", a.id, () => a.leaseDeadline, () =>
          this.client.fail(a.id, a.token, { error: `result refused by the server: ${batched.message ?? "invalid"}`, retryable: false }),
        ).catch((e) => this.#log.error?.(`fail report refused: ${describe(e)}`, { jobId: a.id }));
        return;
      }
      // The batch got no usable answer: this job is reported on its own, with retries.
    }
    const report =
      outcome.type === "complete"
        ? () => this.client.complete(a.id, a.token, outcome.result)
        : () => {
            const failure: { error: string; retryable: boolean; retryAfterMs?: number } = { error: outcome.error, retryable: outcome.retryable };
            if (outcome.retryAfterMs !== undefined) failure.retryAfterMs = outcome.retryAfterMs;
            return this.client.fail(a.id, a.token, failure);
          };
    try {
      await this.#withRetries(outcome.type, a.id, () => a.leaseDeadline, report, a.stopReason === "cancelled");
    } catch (error) {
      // The server refused the result itself (e.g. larger than --max-result-bytes): the job must
      // not stay running until its lease expires, so the attempt fails for good.
      if (outcome.type === "complete" && error instanceof InvalidInputError) {
        await this.#withRetries("fail", a.id, () => a.leaseDeadline, () =>
          this.client.fail(a.id, a.token, { error: `result refused by the server: ${error.message}`, retryable: false }),
        ).catch((e) => this.#log.error?.(`fail report refused: ${describe(e)}`, { jobId: a.id }));
      } else {
        this.#log.error?.(`${outcome.type} report refused: ${describe(error)}`, { jobId: a.id });
      }
    }
  }

  /**
   * Send a report, retrying on a network error or 5xx with backoff until the lease would have
   * expired. A `lease_lost` answer is logged and swallowed (the report changed nothing); any other
   * error answer is thrown.
   */
  async #withRetries(
    what: string,
    jobId: string,
    deadline: number | (() => number),
    send: () => Promise<unknown>,
    quietLeaseLost = false,
  ): Promise<void> {
    const until = typeof deadline === "number" ? () => deadline : deadline;
    let delay = 100;
    for (;;) {
      try {
        await send();
        return;
      } catch (error) {
        if (error instanceof LeaseLostError) {
          this.#log[quietLeaseLost ? "debug" : "warn"]?.(`${what} refused, lease lost (the report changed nothing): ${error.message}`, { jobId });
          return;
        }
        const transient = error instanceof FaultlineConnectionError || error instanceof UnavailableError || (error instanceof ApiError && error.status === 408);
        if (!transient) throw error;
        const wait = Math.min(delay, 5_000) * (0.5 + Math.random() / 2);
        if (Date.now() + wait >= until()) {
          this.#log.error?.(`${what} not delivered before the lease would have expired: ${describe(error)}`, { jobId });
          return;
        }
        this.#log.warn?.(`${what} failed, retrying in ${Math.round(wait)} ms: ${describe(error)}`, { jobId });
        await sleep(wait);
        delay *= 2;
      }
    }
  }

  #context(a: Attempt): JobContext {
    const workerId = this.workerId;
    return {
      jobId: a.id,
      kind: a.job.kind,
      queue: a.job.queue,
      attempt: a.job.attempts,
      maxAttempts: a.job.max_attempts,
      leaseToken: a.token,
      workerId,
      signal: a.controller.signal,
      get stopReason() {
        return a.stopReason;
      },
      step: (name, fn) => this.#step(a, name, fn),
      sleep: (ms) => {
        if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) throw new FaultlineError(`sleep: ms must be a non-negative number, got ${ms}`);
        return this.#sleepUntil(a, new Date(Date.now() + Math.min(ms, 36_500 * 86_400_000)));
      },
      sleepUntil: (until) => this.#sleepUntil(a, until instanceof Date ? until : new Date(until)),
      waitForSignal: <P>(name: string, timeoutMs: number) => this.#waitForSignal<P>(a, name, timeoutMs),
    };
  }

  // ---- durable steps, sleeps and signals -----------------------------------------------------

  async #step<T>(a: Attempt, name: string, fn: () => T | Promise<T>): Promise<T> {
    const problem = nameProblem(name, "step name") ?? (name.startsWith(RESERVED_PREFIX) ? `step name ${JSON.stringify(name)}: names starting with "${RESERVED_PREFIX}" are the library's own` : undefined);
    if (problem) throw new PermanentError(problem);
    if (a.steps === undefined) {
      // A claim's answer leaves the steps out: read them once. While this lease holds, no one
      // else can record a step of this job, so this and our own records are the whole truth.
      const steps = await this.#durable(a, "steps", () => this.client.steps(a.id));
      a.steps ??= new Map(steps.map((st) => [st.name, st.result ?? null]));
    }
    if (a.steps.has(name)) return a.steps.get(name) as T;
    const value = await fn();
    let result: unknown;
    try {
      const text = JSON.stringify(value);
      result = text === undefined ? undefined : JSON.parse(text);
    } catch (error) {
      throw new PermanentError(`step ${JSON.stringify(name)}: the result is not JSON: ${describe(error)}`);
    }
    const recorded = await this.#durable(a, `step ${JSON.stringify(name)}`, () => this.client.recordStep(a.id, a.token, name, result));
    if (!a.steps.has(name)) a.steps.set(name, recorded.step.result ?? null);
    return a.steps.get(name) as T;
  }

  async #sleepUntil(a: Attempt, until: Date): Promise<void> {
    if (Number.isNaN(until.getTime())) throw new FaultlineError("sleepUntil: not a valid time");
    const seq = ++a.sleeps;
    const answer = await this.#durable(a, "sleep", () => this.client.sleepJob(a.id, a.token, until, seq));
    if (answer.state === "over") return;
    this.#suspend(a, `sleeping until ${answer.until}`);
    throw new JobSuspendedError("sleeping", `job ${a.id} sleeps until ${answer.until}`, answer.until);
  }

  async #waitForSignal<P>(a: Attempt, name: string, timeoutMs: number): Promise<P | null | undefined> {
    const problem = nameProblem(name, "signal name");
    if (problem) throw new PermanentError(problem);
    if (typeof timeoutMs !== "number" || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
      throw new FaultlineError(`waitForSignal: timeoutMs must be a non-negative number, got ${timeoutMs}`);
    }
    const answer = await this.#durable(a, `wait for ${JSON.stringify(name)}`, () => this.client.waitForSignal<P>(a.id, a.token, name, timeoutMs));
    if (answer.outcome === "signalled") return answer.payload ?? null;
    if (answer.outcome === "timed_out") return undefined;
    const until = answer.until ?? undefined;
    this.#suspend(a, `waiting for signal ${JSON.stringify(name)} until ${until}`);
    throw new JobSuspendedError("waiting", `job ${a.id} waits for signal ${JSON.stringify(name)} until ${until}`, until, name);
  }

  /** The server took the job back (a sleep or a wait): no more heartbeats, nothing reported. */
  #suspend(a: Attempt, why: string): void {
    a.suspended = true;
    this.#stopHeartbeats(a);
    clearTimeout(a.fenceTimer);
    this.#log.info?.(`${why}: the job is handed back, nothing reported for this run`, { jobId: a.id, leaseToken: a.token });
  }

  /**
   * A durable call, fenced by the lease. Network failures and 5xx are retried with backoff until
   * the lease would have expired (each call is idempotent: a step records once, a sleep keeps its
   * first time, a wait its first answer). A lost lease stops the handler like any lease loss and
   * throws {@link LeaseLostError}; a refused name or result throws {@link PermanentError}.
   */
  async #durable<T>(a: Attempt, what: string, send: () => Promise<T>): Promise<T> {
    let delay = 100;
    for (;;) {
      try {
        return await send();
      } catch (error) {
        if (error instanceof LeaseLostError || error instanceof NotFoundError) {
          this.#stopHeartbeats(a);
          clearTimeout(a.fenceTimer);
          this.#log.warn?.(`${what} refused, lease lost; handler told to stop: ${error.message}`, { jobId: a.id, leaseToken: a.token });
          this.#abort(a, "lease_lost", `the lease was lost: ${error.message}`);
          throw error;
        }
        if (error instanceof InvalidInputError) throw new PermanentError(`${what} refused by the server: ${error.message}`, { cause: error });
        const transient = error instanceof FaultlineConnectionError || error instanceof UnavailableError || (error instanceof ApiError && error.status === 408);
        const wait = Math.min(delay, 5_000) * (0.5 + Math.random() / 2);
        if (!transient || Date.now() + wait >= a.leaseDeadline) throw error;
        this.#log.warn?.(`${what} failed, retrying in ${Math.round(wait)} ms: ${describe(error)}`, { jobId: a.id });
        await sleep(wait);
        delay *= 2;
      }
    }
  }

  #abort(a: Attempt, reason: StopReason, message: string): void {
    if (a.stopReason !== undefined || a.decided) return;
    a.stopReason = reason;
    setTimeout(a.endStopGrace, STOP_GRACE_MS);
    a.controller.abort(new JobStoppedError(reason, message));
  }

  #stopHeartbeats(a: Attempt): void {
    a.heartbeating = false;
    clearTimeout(a.heartbeatTimer);
  }

  // ---- heartbeats and self-fencing -----------------------------------------------------------

  #scheduleHeartbeat(a: Attempt, delay: number): void {
    if (!a.heartbeating) return;
    a.heartbeatTimer = setTimeout(() => void this.#heartbeat(a), delay);
  }

  async #heartbeat(a: Attempt): Promise<void> {
    if (!a.heartbeating) return;
    if (this.#hooks.skipHeartbeat?.(a.job)) {
      this.#scheduleHeartbeat(a, this.heartbeatIntervalMs);
      return;
    }
    const sentAt = Date.now();
    try {
      const answer = await this.client.heartbeat(a.id, a.token, this.leaseTtlMs, { timeoutMs: Math.max(1_000, this.heartbeatIntervalMs) });
      if (!a.heartbeating) return;
      a.renewedAt = sentAt;
      a.leaseDeadline = sentAt + this.leaseTtlMs;
      this.#armFence(a);
      if (answer.cancel_requested) {
        this.#stopHeartbeats(a);
        this.#abort(a, "cancelled", "the job was cancelled");
        return;
      }
      this.#scheduleHeartbeat(a, this.heartbeatIntervalMs);
    } catch (error) {
      if (!a.heartbeating) return;
      if (error instanceof LeaseLostError || error instanceof NotFoundError) {
        this.#stopHeartbeats(a);
        clearTimeout(a.fenceTimer);
        if ((await this.#whyLost(a)) === "cancelled") {
          this.#abort(a, "cancelled", "the job was cancelled");
        } else {
          this.#log.warn?.(`lease lost on heartbeat${a.decided ? "" : "; handler told to stop"}: ${error.message}`, { jobId: a.id, leaseToken: a.token });
          this.#abort(a, "lease_lost", `the lease was lost: ${error.message}`);
        }
        return;
      }
      this.#log.warn?.(`heartbeat failed: ${describe(error)}`, { jobId: a.id });
      this.#scheduleHeartbeat(a, Math.min(this.heartbeatIntervalMs, 1_000));
    }
  }

  // Batched: one timer for the worker renews every running job's lease.

  #scheduleBatch(delay: number): void {
    if (!this.#heartbeatBatches) return;
    this.#batchTimer = setTimeout(() => void this.#beatAll(), delay);
  }

  async #beatAll(): Promise<void> {
    if (!this.#heartbeatBatches) return;
    const beating = [...this.#active].filter((a) => a.heartbeating && !this.#hooks.skipHeartbeat?.(a.job));
    const chunks: Attempt[][] = [];
    for (let i = 0; i < beating.length; i += 1000) chunks.push(beating.slice(i, i + 1000));
    const answered = await Promise.all(chunks.map((chunk) => this.#beatChunk(chunk)));
    if (!this.#heartbeatBatches) return;
    this.#scheduleBatch(answered.every(Boolean) ? this.heartbeatIntervalMs : Math.min(this.heartbeatIntervalMs, 1_000));
  }

  /** One batch of heartbeats, each outcome applied as a single heartbeat's answer; false when it got no usable answer. */
  async #beatChunk(chunk: Attempt[]): Promise<boolean> {
    const sentAt = Date.now();
    let outcomes: Awaited<ReturnType<Client["heartbeatBatch"]>>;
    try {
      outcomes = await this.client.heartbeatBatch(
        chunk.map((a) => ({ id: a.id, lease_token: a.token })),
        this.leaseTtlMs,
        { timeoutMs: Math.max(1_000, this.heartbeatIntervalMs) },
      );
      if (outcomes.length !== chunk.length) throw new FaultlineError(`${outcomes.length} outcomes for ${chunk.length} heartbeats`);
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
        if (this.#heartbeatBatches) {
          // A server without POST /v1/jobs/heartbeat: each job heartbeats on its own from now on.
          this.#heartbeatBatches = false;
          clearTimeout(this.#batchTimer);
          this.#log.warn?.(`the server has no POST /v1/jobs/heartbeat (${describe(error)}); heartbeats go one by one`);
          for (const a of this.#active) this.#scheduleHeartbeat(a, 0);
        }
        return false;
      }
      // Each job's self-fencing timer stops its handler if this goes on for too long.
      this.#log.warn?.(`a batch of ${chunk.length} heartbeats failed: ${describe(error)}`);
      return false;
    }
    chunk.forEach((a, i) => {
      if (!a.heartbeating) return; // reported, handed back or suspended meanwhile
      const outcome = outcomes[i]!.outcome;
      if (outcome === "extended") {
        a.renewedAt = sentAt;
        a.leaseDeadline = sentAt + this.leaseTtlMs;
        this.#armFence(a);
      } else if (outcome === "cancelled") {
        this.#stopHeartbeats(a);
        clearTimeout(a.fenceTimer);
        this.#abort(a, "cancelled", "the job was cancelled");
      } else {
        this.#stopHeartbeats(a);
        clearTimeout(a.fenceTimer);
        this.#log.warn?.(`lease lost on heartbeat${a.decided ? "" : "; handler told to stop"}: ${outcome}`, { jobId: a.id, leaseToken: a.token });
        this.#abort(a, "lease_lost", `the lease was lost: heartbeat answered ${outcome}`);
      }
    });
    return true;
  }

  /** A refused heartbeat: cancelled (the job is cancelled under our token) or lost. */
  async #whyLost(a: Attempt): Promise<StopReason> {
    try {
      const job = await this.client.getJob(a.id, { timeoutMs: 5_000 });
      return job.state === "cancelled" && job.lease_token === a.token ? "cancelled" : "lease_lost";
    } catch {
      return "lease_lost";
    }
  }

  /**
   * Self-fencing: a handler whose lease has not been renewed for two thirds of the TTL is told to
   * stop (reason `lease_lost`) before the server can hand the job to another worker; its job is
   * then handed back if the server still lets us.
   */
  #armFence(a: Attempt): void {
    clearTimeout(a.fenceTimer);
    if (this.#hooks.disableSelfFence || a.decided || !a.heartbeating) return;
    const at = a.renewedAt + (this.leaseTtlMs * 2) / 3;
    a.fenceTimer = setTimeout(() => {
      if (a.decided || a.stopReason !== undefined) return;
      this.#log.error?.(`self-fencing: lease of job ${a.id} not renewed for ${Math.round((this.leaseTtlMs * 2) / 3)} ms; handler told to stop`, {
        jobId: a.id,
        leaseToken: a.token,
      });
      a.selfFenced = true;
      this.#stopHeartbeats(a);
      this.#abort(a, "lease_lost", "the lease could not be renewed in time (self-fenced)");
    }, Math.max(0, at - Date.now()));
  }
}

function jsonOutcome(result: unknown): Outcome {
  if (result === undefined) return { type: "complete", result: undefined };
  try {
    const text = JSON.stringify(result);
    if (text === undefined) return { type: "complete", result: undefined };
    return { type: "complete", result: JSON.parse(text) };
  } catch (error) {
    return { type: "fail", error: `the handler's result is not JSON: ${describe(error)}`, retryable: false };
  }
}

function failureOf(error: unknown): Outcome {
  if (error instanceof PermanentError) return { type: "fail", error: messageOf(error), retryable: false };
  if (error instanceof RetryableError) {
    const outcome: Outcome = { type: "fail", error: messageOf(error), retryable: true };
    // The server takes 0 to a year.
    if (error.afterMs !== undefined) outcome.retryAfterMs = Math.min(365 * 24 * 3600 * 1000, Math.max(0, Math.round(error.afterMs)));
    return outcome;
  }
  return { type: "fail", error: messageOf(error), retryable: true };
}

/** The error text of a failed attempt: never empty (the server refuses an empty one). */
function messageOf(error: unknown): string {
  let text: string;
  if (error instanceof JobStoppedError) text = `stopped: ${error.message}`;
  else if (error instanceof Error) text = error.message || error.name;
  else if (typeof error === "string") text = error;
  else {
    try {
      text = JSON.stringify(error) ?? String(error);
    } catch {
      text = String(error);
    }
  }
  return text.trim() === "" ? "the handler failed without a message" : text;
}

/** Step names starting with this are the server's own (sleeps, waits, signals). */
const RESERVED_PREFIX = "faultline:";

/** Why `name` cannot be a step's or a signal's name (1–255 bytes, not blank, no control characters). */
function nameProblem(name: unknown, what: string): string | undefined {
  if (typeof name !== "string") return `${what} must be a string, got ${typeof name}`;
  if (name.trim() === "") return `${what} ${JSON.stringify(name)} must not be empty or blank`;
  const bytes = Buffer.byteLength(name, "utf8");
  if (bytes > 255) return `${what} ${JSON.stringify(name.slice(0, 40))}… is ${bytes} bytes; at most 255 allowed`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) return `${what} ${JSON.stringify(name)} contains a control character`;
  return undefined;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

function positiveInt(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new FaultlineError(`Worker: ${name} must be a positive integer, got ${value}`);
  return value;
}

function nonNegativeInt(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0) throw new FaultlineError(`Worker: ${name} must be a non-negative integer, got ${value}`);
  return value;
}
