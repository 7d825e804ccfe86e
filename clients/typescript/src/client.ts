import {
  ApiError,
  FaultlineConnectionError,
  FaultlineError,
  FaultlineTimeoutError,
  apiErrorFor,
  type ApiErrorBody,
} from "./errors.js";
import type {
  BatchResult,
  ClaimRequest,
  ClaimResponse,
  CompleteBatchResponse,
  CompleteItem,
  CompleteOutcome,
  CompleteRequest,
  EnqueueRequest,
  FailRequest,
  HeartbeatBatchResponse,
  HeartbeatOutcome,
  HeartbeatRequest,
  HeartbeatResponse,
  Job,
  LeaseItem,
  JobState,
  Page,
  ReleaseRequest,
  SignalResponse,
  SleepResponse,
  Step,
  StepsResponse,
  WaitResponse,
} from "./types.js";

/** How to reach the server. */
export interface ClientOptions {
  /** The API's base URL, e.g. `http://127.0.0.1:8000`. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <token>` (the server's `FAULTLINE_API_TOKEN`). */
  token?: string;
  /** Per-request timeout in milliseconds (default 30,000). A claim adds its `wait_ms` to it. */
  timeoutMs?: number;
  /** Extra headers sent with every request. */
  headers?: Record<string, string>;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
}

/** Options of one enqueue: every field of `POST /v1/jobs` besides `kind` and `payload`. */
export interface EnqueueOptions {
  /** Queue (default `default`). */
  queue?: string;
  /** Lower runs first (default 0; a smallint). */
  priority?: number;
  /** Attempt budget, at least 1 (default 5). */
  maxAttempts?: number;
  /** Not eligible before this time. */
  runAt?: Date | string;
  /** At most one job exists per key: the same request again returns that job (200), a different one is a 409. */
  idempotencyKey?: string;
  /** Execution timeout of each attempt, in milliseconds. */
  timeoutMs?: number;
  /** At most the queue's `key_concurrency` (default 1) running jobs share this key. */
  concurrencyKey?: string;
  /** Jobs that must succeed first: job ids, or in a batch also the index of an earlier job of the batch. */
  dependsOn?: Array<string | number>;
  /** At most one job per key in `uniqueScope`; a duplicate returns the existing job (200). */
  uniqueKey?: string;
  /** `active` (default with a `uniqueKey`) or `period`. */
  uniqueScope?: "active" | "period";
  /** The period of a `period` scope, in milliseconds. */
  uniquePeriodMs?: number;
}

/** One job of {@link Client.enqueueBatch}. */
export interface BatchJob<P = unknown> extends EnqueueOptions {
  kind: string;
  payload?: P;
}

/** What {@link Client.enqueue} returns. */
export interface EnqueueResult<P = unknown> {
  job: Job<P>;
  /** `true` for a new job (201); `false` when an existing one was returned (200). */
  created: boolean;
  /** Same idempotency key and request as an existing job (`Idempotent-Replayed: true`). */
  replayed: boolean;
  /** A job with the same uniqueness key exists in its scope (`Unique-Duplicate: true`). */
  duplicate: boolean;
}

/** Filters of {@link Client.listJobs}. */
export interface ListJobsOptions {
  state?: JobState;
  queue?: string;
  kind?: string;
  /** Page size, 1 to 1,000 (default 50). */
  limit?: number;
  /** `next_cursor` of the previous page. */
  cursor?: string;
  /** Bulky fields to include (`payload`, `result`, `errors`, `all`): a listing leaves them out by default. */
  fields?: Array<"payload" | "result" | "errors" | "all"> | string;
}

/** Per-call options. */
export interface RequestOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** What {@link Client.recordStep} returns: the step as recorded, and whether this call recorded it. */
export interface RecordedStep<R = unknown> {
  step: Step<R>;
  /** `true`: recorded now (201); `false`: recorded earlier, and its first result stands (200). */
  created: boolean;
}

/** How a handler's attempt failed, for {@link Client.fail}. */
export interface FailOptions {
  error: string;
  /** Default true. */
  retryable?: boolean;
  /** Not before this many milliseconds (instead of the server's backoff). */
  retryAfterMs?: number;
}

// Every field of the server's enqueue body, by the option that sets it. If the server's
// document gains a field, `npm run generate` then `npm run build` fails here until it is mapped.
const ENQUEUE_FIELDS = {
  queue: "queue",
  priority: "priority",
  maxAttempts: "max_attempts",
  runAt: "run_at",
  idempotencyKey: "idempotency_key",
  timeoutMs: "timeout_ms",
  concurrencyKey: "concurrency_key",
  dependsOn: "depends_on",
  uniqueKey: "unique_key",
  uniqueScope: "unique_scope",
  uniquePeriodMs: "unique_period_ms",
} as const satisfies { [K in keyof Required<EnqueueOptions>]: keyof EnqueueRequest };
type Unmapped = Exclude<keyof EnqueueRequest, "kind" | "payload" | (typeof ENQUEUE_FIELDS)[keyof typeof ENQUEUE_FIELDS]>;
const everyFieldMapped: [Unmapped] extends [never] ? true : { unmappedEnqueueField: Unmapped } = true;
void everyFieldMapped;

/** The body of `POST /v1/jobs` for `kind`, `payload` and `options`. */
export function enqueueBody(kind: string, payload: unknown, options: EnqueueOptions = {}): EnqueueRequest {
  const body: Record<string, unknown> = { kind };
  if (payload !== undefined) body.payload = payload;
  for (const [option, field] of Object.entries(ENQUEUE_FIELDS)) {
    let value = (options as Record<string, unknown>)[option];
    if (value === undefined) continue;
    if (value instanceof Date) value = value.toISOString();
    body[field] = value;
  }
  return body as EnqueueRequest;
}

const MUTATING = new Set(["POST", "PUT", "PATCH", "DELETE"]);

interface Answer<T> {
  status: number;
  headers: Headers;
  data: T;
}

/**
 * The HTTP client: enqueue and inspect jobs, and the worker protocol's calls (claim, heartbeat,
 * complete, fail, release) that {@link Worker} is built on.
 */
export class Client {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly #token: string | undefined;
  readonly #headers: Record<string, string>;
  readonly #fetch: typeof fetch;

  constructor(options: ClientOptions) {
    if (!options || typeof options.baseUrl !== "string" || options.baseUrl === "") {
      throw new FaultlineError("Client: baseUrl is required, e.g. http://127.0.0.1:8000");
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.#token = options.token;
    this.#headers = { ...(options.headers ?? {}) };
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") {
      throw new FaultlineError("Client: no fetch available (Node >= 18 has one built in)");
    }
    this.#fetch = f;
  }

  // ---- enqueue and inspect -----------------------------------------------------------------

  /** Enqueue one job. `created` is false when the server returned an existing job (idempotency replay or uniqueness duplicate). */
  async enqueue<P = unknown>(
    kind: string,
    payload?: P,
    options: EnqueueOptions = {},
    requestOptions?: RequestOptions,
  ): Promise<EnqueueResult<P>> {
    const answer = await this.request<Job<P>>("POST", "/v1/jobs", {
      ...requestOptions,
      body: enqueueBody(kind, payload, options),
    });
    return {
      job: answer.data,
      created: answer.status === 201,
      replayed: answer.headers.get("idempotent-replayed") === "true",
      duplicate: answer.headers.get("unique-duplicate") === "true",
    };
  }

  /** Enqueue up to 1,000 jobs in one transaction; one result per job, in order. */
  async enqueueBatch<P = unknown>(jobs: Array<BatchJob<P>>, requestOptions?: RequestOptions): Promise<Array<BatchResult<P>>> {
    const body = { jobs: jobs.map(({ kind, payload, ...options }) => enqueueBody(kind, payload, options)) };
    const answer = await this.request<{ results: Array<BatchResult<P>> }>("POST", "/v1/jobs/batch", { ...requestOptions, body });
    return answer.data.results;
  }

  /** The job, with its error history. Throws {@link NotFoundError} when there is none. */
  async getJob<P = unknown, R = unknown>(id: string, requestOptions?: RequestOptions): Promise<Job<P, R>> {
    return (await this.request<Job<P, R>>("GET", `/v1/jobs/${encodeURIComponent(id)}`, requestOptions)).data;
  }

  /** One page of jobs, newest first. */
  async listJobs<P = unknown>(filters: ListJobsOptions = {}, requestOptions?: RequestOptions): Promise<Page<P>> {
    const query = new URLSearchParams();
    for (const name of ["state", "queue", "kind", "limit", "cursor"] as const) {
      const value = filters[name];
      if (value !== undefined && value !== null) query.set(name, String(value));
    }
    if (filters.fields !== undefined) {
      query.set("fields", Array.isArray(filters.fields) ? filters.fields.join(",") : filters.fields);
    }
    const qs = query.toString();
    return (await this.request<Page<P>>("GET", `/v1/jobs${qs ? `?${qs}` : ""}`, requestOptions)).data;
  }

  /** Every job matching `filters`, page after page. */
  async *iterateJobs<P = unknown>(filters: Omit<ListJobsOptions, "cursor"> = {}, requestOptions?: RequestOptions): AsyncGenerator<Job<P>> {
    let cursor: string | undefined;
    do {
      const page: Page<P> = await this.listJobs<P>({ ...filters, ...(cursor ? { cursor } : {}) }, requestOptions);
      yield* page.jobs;
      cursor = page.next_cursor ?? undefined;
    } while (cursor);
  }

  /** Cancel a queued or running job (a running one is told at its next heartbeat). */
  async cancel(id: string, requestOptions?: RequestOptions): Promise<Job> {
    return (await this.request<Job>("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`, requestOptions)).data;
  }

  /** Re-queue a failed or cancelled job with a fresh attempt budget. */
  async retry(id: string, requestOptions?: RequestOptions): Promise<Job> {
    return (await this.request<Job>("POST", `/v1/jobs/${encodeURIComponent(id)}/retry`, requestOptions)).data;
  }

  /** `GET /ready`: true when the server and its database answer. */
  async ready(requestOptions?: RequestOptions): Promise<boolean> {
    try {
      await this.request("GET", "/ready", requestOptions);
      return true;
    } catch (error) {
      if (error instanceof ApiError) return false;
      throw error;
    }
  }

  // ---- the worker protocol (SPEC §15) --------------------------------------------------------

  /** Claim up to `max` jobs, waiting up to `wait_ms` for one. Each comes with its `lease_token`. */
  async claim<P = unknown>(body: ClaimRequest, requestOptions?: RequestOptions): Promise<Array<Job<P>>> {
    const wait = (body as { wait_ms?: number | null }).wait_ms ?? 0;
    const answer = await this.request<ClaimResponse>("POST", "/v1/claims", {
      ...requestOptions,
      timeoutMs: (requestOptions?.timeoutMs ?? this.timeoutMs) + wait,
      body,
    });
    return (answer.data as { jobs: unknown[] }).jobs as Array<Job<P>>;
  }

  /**
   * Extend the lease to `leaseTtlMs` from now (give the claim's `lease_ttl_ms`; the server's
   * default is 30,000). `cancel_requested` in the answer means the job was cancelled: stop.
   * Throws {@link LeaseLostError} when the token is no longer current.
   */
  async heartbeat(id: string, leaseToken: number, leaseTtlMs?: number, requestOptions?: RequestOptions): Promise<HeartbeatResponse> {
    const body: HeartbeatRequest = { lease_token: leaseToken };
    if (leaseTtlMs !== undefined) (body as { lease_ttl_ms?: number }).lease_ttl_ms = leaseTtlMs;
    return (await this.request<HeartbeatResponse>("POST", `/v1/jobs/${encodeURIComponent(id)}/heartbeat`, { ...requestOptions, body })).data;
  }

  /**
   * Extend many leases in one request (`POST /v1/jobs/heartbeat`, 1 to 1,000), each to
   * `leaseTtlMs` from now and fenced by its own `lease_token`. One outcome per job, in order:
   * `extended` (with the new `lease_expires_at`), `cancelled` (the job was cancelled: stop it) or
   * `lease_lost` (the token no longer holds the job: stop, and report nothing). A stale token does
   * not stop the others.
   */
  async heartbeatBatch(jobs: LeaseItem[], leaseTtlMs?: number, requestOptions?: RequestOptions): Promise<HeartbeatOutcome[]> {
    const body: { jobs: LeaseItem[]; lease_ttl_ms?: number } = { jobs: jobs.map(({ id, lease_token }) => ({ id, lease_token })) };
    if (leaseTtlMs !== undefined) body.lease_ttl_ms = leaseTtlMs;
    return (await this.request<HeartbeatBatchResponse>("POST", "/v1/jobs/heartbeat", { ...requestOptions, body })).data.results;
  }

  /** Mark the job succeeded with `result` (omitted when undefined). */
  async complete<R = unknown>(id: string, leaseToken: number, result?: R, requestOptions?: RequestOptions): Promise<Job<unknown, R>> {
    const body: CompleteRequest = { lease_token: leaseToken };
    if (result !== undefined) (body as { result?: unknown }).result = result;
    return (await this.request<Job<unknown, R>>("POST", `/v1/jobs/${encodeURIComponent(id)}/complete`, { ...requestOptions, body })).data;
  }

  /**
   * Report many successes in one request (`POST /v1/jobs/complete`, 1 to 1,000), each fenced by
   * its own `lease_token`. One outcome per job, in order: `completed`, `lease_lost` (the token no
   * longer holds the job: nothing changed, as a {@link LeaseLostError} on {@link complete}) or
   * `invalid` (the result was refused: nothing changed, the lease still holds). A stale token does
   * not stop the others.
   */
  async completeBatch(jobs: CompleteItem[], requestOptions?: RequestOptions): Promise<CompleteOutcome[]> {
    const body = {
      jobs: jobs.map(({ id, lease_token, result }) => (result === undefined ? { id, lease_token } : { id, lease_token, result })),
    };
    return (await this.request<CompleteBatchResponse>("POST", "/v1/jobs/complete", { ...requestOptions, body })).data.results;
  }

  /** Report a failed attempt: re-queued (retryable, attempts left) or failed. */
  async fail(id: string, leaseToken: number, failure: FailOptions, requestOptions?: RequestOptions): Promise<Job> {
    const body: FailRequest = { lease_token: leaseToken, error: failure.error };
    if (failure.retryable !== undefined) body.retryable = failure.retryable;
    if (failure.retryAfterMs !== undefined) body.retry_after_ms = Math.max(0, Math.round(failure.retryAfterMs));
    return (await this.request<Job>("POST", `/v1/jobs/${encodeURIComponent(id)}/fail`, { ...requestOptions, body })).data;
  }

  /** Hand the job back (queued at once, the attempt not spent): a worker shutting down. */
  async release(id: string, leaseToken: number, requestOptions?: RequestOptions): Promise<Job> {
    const body: ReleaseRequest = { lease_token: leaseToken };
    return (await this.request<Job>("POST", `/v1/jobs/${encodeURIComponent(id)}/release`, { ...requestOptions, body })).data;
  }

  // ---- durable steps, sleeps and signals (docs/durable.md) ----------------------------------

  /** The steps the job recorded, oldest first (the server's own, named `faultline:…`, included). */
  async steps(id: string, requestOptions?: RequestOptions): Promise<Step[]> {
    return (await this.request<StepsResponse>("GET", `/v1/jobs/${encodeURIComponent(id)}/steps`, requestOptions)).data.steps;
  }

  /**
   * Send signal `name` to a job, with an optional JSON `payload` (`null` when left out). Resolves
   * to whether it was kept: `false` when a signal of that name had been sent already (the first
   * is kept). A signal sent before the job waits for it is kept for that wait. Throws
   * {@link NotFoundError} for an unknown job, {@link ConflictError} for a finished one.
   */
  async sendSignal(id: string, name: string, payload?: unknown, requestOptions?: RequestOptions): Promise<boolean> {
    const body = payload === undefined ? {} : { payload };
    const path = `/v1/jobs/${encodeURIComponent(id)}/signals/${encodeURIComponent(name)}`;
    return (await this.request<SignalResponse>("POST", path, { ...requestOptions, body })).data.kept;
  }

  /**
   * Record step `name` of a claimed job under its lease, once (a handler uses `ctx.step`).
   * Throws {@link LeaseLostError} when the token no longer holds the job: nothing was recorded.
   */
  async recordStep<R = unknown>(id: string, leaseToken: number, name: string, result?: R, requestOptions?: RequestOptions): Promise<RecordedStep<R>> {
    const body = result === undefined ? { lease_token: leaseToken } : { lease_token: leaseToken, result };
    const path = `/v1/jobs/${encodeURIComponent(id)}/steps/${encodeURIComponent(name)}`;
    const answer = await this.request<Step<R>>("PUT", path, { ...requestOptions, body });
    return { step: answer.data, created: answer.status === 201 };
  }

  /**
   * Sleep a claimed job durably until `until` (`seq`: which sleep of the handler, from 1).
   * `sleeping`: the job was put back (stop, report nothing); `over`: go on. A handler uses `ctx.sleep`.
   */
  async sleepJob(id: string, leaseToken: number, until: Date | string, seq?: number, requestOptions?: RequestOptions): Promise<SleepResponse> {
    const body: { lease_token: number; until: string; seq?: number } = {
      lease_token: leaseToken,
      until: until instanceof Date ? until.toISOString() : until,
    };
    if (seq !== undefined) body.seq = seq;
    return (await this.request<SleepResponse>("POST", `/v1/jobs/${encodeURIComponent(id)}/sleep`, { ...requestOptions, body })).data;
  }

  /**
   * Wait for signal `signal`, at most `timeoutMs` from the first call: `signalled` (with its
   * `payload`), `timed_out`, or `parked` (the job now waits in `waiting`: stop, report nothing).
   * A handler uses `ctx.waitForSignal`.
   */
  async waitForSignal<P = unknown>(id: string, leaseToken: number, signal: string, timeoutMs: number, requestOptions?: RequestOptions): Promise<WaitResponse<P>> {
    const body = { lease_token: leaseToken, signal, timeout_ms: Math.max(0, Math.round(timeoutMs)) };
    return (await this.request<WaitResponse<P>>("POST", `/v1/jobs/${encodeURIComponent(id)}/wait`, { ...requestOptions, body })).data;
  }

  // ---- transport ---------------------------------------------------------------------------

  /**
   * One request. Mutating methods always send `Content-Type: application/json` (the server
   * refuses them without it, body or not). A 2xx answer's JSON is returned; any other status
   * throws the fitting {@link ApiError}; no answer throws {@link FaultlineConnectionError}.
   */
  async request<T = unknown>(
    method: string,
    path: string,
    options: RequestOptions & { body?: unknown } = {},
  ): Promise<Answer<T>> {
    const headers: Record<string, string> = { accept: "application/json", ...this.#headers };
    if (MUTATING.has(method)) headers["content-type"] = "application/json";
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    const init: RequestInit = { method, headers };
    if (options.body !== undefined) init.body = JSON.stringify(options.body);

    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const outer = options.signal;
    const onAbort = () => controller.abort(outer?.reason);
    if (outer?.aborted) onAbort();
    else outer?.addEventListener("abort", onAbort, { once: true });
    init.signal = controller.signal;

    const url = this.baseUrl + path;
    try {
      let response: Response;
      try {
        response = await this.#fetch(url, init);
      } catch (error) {
        throw this.#noAnswer(method, url, error, timedOut, timeoutMs, outer);
      }
      let text: string;
      try {
        text = await response.text();
      } catch (error) {
        throw this.#noAnswer(method, url, error, timedOut, timeoutMs, outer);
      }
      if (!response.ok) throw errorFromAnswer(response, text);
      let data: unknown = undefined;
      if (text.length > 0) {
        try {
          data = JSON.parse(text);
        } catch {
          throw new FaultlineError(`${method} ${url}: the answer (${response.status}) is not JSON: ${text.slice(0, 200)}`);
        }
      }
      return { status: response.status, headers: response.headers, data: data as T };
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener("abort", onAbort);
    }
  }

  #noAnswer(method: string, url: string, error: unknown, timedOut: boolean, timeoutMs: number, outer?: AbortSignal): unknown {
    if (outer?.aborted && !timedOut) return outer.reason ?? error;
    if (timedOut) {
      return new FaultlineTimeoutError(`${method} ${url}: no answer within ${timeoutMs} ms`, { cause: error });
    }
    const cause = error as { cause?: { code?: string; message?: string }; message?: string };
    const detail = cause?.cause?.code ?? cause?.cause?.message ?? cause?.message ?? String(error);
    return new FaultlineConnectionError(`${method} ${url}: ${detail}`, { cause: error });
  }
}

function errorFromAnswer(response: Response, text: string): ApiError {
  let body: ApiErrorBody | undefined;
  try {
    const parsed = JSON.parse(text) as { error?: ApiErrorBody };
    if (parsed && typeof parsed.error === "object" && parsed.error && typeof parsed.error.code === "string") {
      body = { ...parsed.error, message: String(parsed.error.message ?? "") };
    }
  } catch {
    // not JSON: described below
  }
  body ??= { code: `http_${response.status}`, message: text.slice(0, 500) || response.statusText };
  const retryAfter = response.headers.get("retry-after");
  const seconds = retryAfter === null ? NaN : Number(retryAfter);
  return apiErrorFor(response.status, body, Number.isFinite(seconds) ? seconds * 1000 : undefined);
}
