/**
 * The request and response types, taken from `src/generated/schema.ts` (generated from the
 * server's `GET /openapi.json` by `npm run generate`).
 *
 * The worker protocol's bodies (SPEC §15: claims, heartbeat, complete, fail, release) are looked
 * up in the generated `paths` by route; while the document does not describe a route yet, the
 * hand-written shape below stands in. Once it does, regenerating is all it takes: the generated
 * type replaces the fallback, and `npm run build` fails if the two disagree with this package.
 */
import type { components, paths } from "./generated/schema.js";

type Schemas = components["schemas"];

/** A job's state. */
export type JobState = Schemas["JobState"];

/** One failed attempt in a job's error history. */
export type AttemptError = Schemas["AttemptError"];

/**
 * A job, as `GET /v1/jobs/{id}` shows it. `payload` and `result` are any JSON (the document
 * only says "object"); type them with the parameters.
 */
export type Job<P = unknown, R = unknown> = Omit<Schemas["Job"], "payload" | "result"> & {
  payload: P;
  result?: R | null;
};

/** The body of `POST /v1/jobs`, as the server's document describes it. */
export type EnqueueRequest = Omit<Schemas["EnqueueRequest"], "payload" | "depends_on"> & {
  payload?: unknown;
  depends_on?: Array<string | number>;
};

/** The outcome for one job of `POST /v1/jobs/batch`. */
export type BatchResult<P = unknown> =
  | { status: "created"; job: Job<P> }
  | { status: "replayed"; job: Job<P> }
  | { status: "duplicate"; job: Job<P> }
  | { status: "conflict"; idempotency_key: string; existing_job_id: string };

/** A page of `GET /v1/jobs`. */
export type Page<P = unknown> = Omit<Schemas["Page"], "jobs"> & { jobs: Array<Job<P>> };

/** The `error` object of an error answer. */
export type ErrorDetail = Schemas["ErrorDetail"];

// ---------------------------------------------------------------------------------------------
// Worker protocol (SPEC §15). Generated when the document has the route, else the fallback.

type PostOf<Path> = Path extends keyof paths ? (paths[Path] extends { post: infer Op } ? Op : never) : never;
type Usable<T, Fallback> = [T] extends [never] ? Fallback : unknown extends T ? Fallback : T;
type RequestBody<Path, Fallback> = Usable<
  PostOf<Path> extends { requestBody?: { content: { "application/json": infer B } } } ? B : never,
  Fallback
>;
type OkBody<Path, Fallback> = Usable<
  PostOf<Path> extends { responses: { 200: { content: { "application/json": infer B } } } } ? B : never,
  Fallback
>;

/** Hand-written stand-ins for the §15 bodies, used until the document describes them. */
export namespace Fallback {
  export interface ClaimRequest {
    /** 1–255 characters. */
    worker_id: string;
    /** At least one. */
    queues: string[];
    /** 1–1,000 (default 1). */
    max?: number;
    /** 0–60,000 (default 0): how long an empty claim waits for a job. */
    wait_ms?: number;
    /** 1,000–3,600,000 (default about 30,000). */
    lease_ttl_ms?: number;
  }
  export interface ClaimResponse {
    jobs: Array<Schemas["Job"]>;
  }
  export interface LeaseRequest {
    lease_token: number;
  }
  export interface HeartbeatRequest {
    lease_token: number;
    /** Extend the lease to this long from now, 1,000 to 3,600,000 (default 30,000): the claim's `lease_ttl_ms`. */
    lease_ttl_ms?: number;
  }
  export interface HeartbeatResponse {
    lease_expires_at: string;
    cancel_requested: boolean;
  }
  export interface CompleteRequest {
    lease_token: number;
    result?: unknown;
  }
  export interface FailRequest {
    lease_token: number;
    error: string;
    /** Default true. */
    retryable?: boolean;
    /** At least 0. */
    retry_after_ms?: number;
  }
}

/** `POST /v1/claims` body. */
export type ClaimRequest = RequestBody<"/v1/claims", Fallback.ClaimRequest>;
/** `POST /v1/claims` answer. */
export type ClaimResponse = OkBody<"/v1/claims", Fallback.ClaimResponse>;
/** `POST /v1/jobs/{id}/heartbeat` body. */
export type HeartbeatRequest = RequestBody<"/v1/jobs/{id}/heartbeat", Fallback.HeartbeatRequest>;
/** `POST /v1/jobs/{id}/heartbeat` answer. */
export type HeartbeatResponse = OkBody<"/v1/jobs/{id}/heartbeat", Fallback.HeartbeatResponse>;
/** `POST /v1/jobs/{id}/complete` body. */
export type CompleteRequest = RequestBody<"/v1/jobs/{id}/complete", Fallback.CompleteRequest>;
/** `POST /v1/jobs/{id}/fail` body. */
export type FailRequest = RequestBody<"/v1/jobs/{id}/fail", Fallback.FailRequest>;
/** `POST /v1/jobs/{id}/release` body. */
export type ReleaseRequest = RequestBody<"/v1/jobs/{id}/release", Fallback.LeaseRequest>;

/** One completion of `POST /v1/jobs/complete`: `{id, lease_token, result?}`. */
export type CompleteItem = Omit<Schemas["CompleteItem"], "result"> & { result?: unknown };
/**
 * What became of one completion of a batch: `completed`; `lease_lost` (the token no longer holds
 * the job: nothing changed, as a 409 on a single complete); or `invalid` (the result was refused,
 * e.g. too large: nothing changed, the lease still holds). `message` says why.
 */
export type CompleteOutcome = Omit<Schemas["CompleteOutcome"], "outcome"> & {
  outcome: "completed" | "lease_lost" | "invalid";
};
/** `POST /v1/jobs/complete` answer. */
export type CompleteBatchResponse = { results: CompleteOutcome[] };

/** One lease of `POST /v1/jobs/heartbeat`: `{id, lease_token}`. */
export type LeaseItem = Schemas["LeaseItem"];
/**
 * What became of one heartbeat of a batch: `extended` (with the new `lease_expires_at`);
 * `cancelled` (the job was cancelled: stop it); or `lease_lost` (the token no longer holds the
 * job: stop, and report nothing).
 */
export type HeartbeatOutcome = Omit<Schemas["HeartbeatOutcome"], "outcome"> & {
  outcome: "extended" | "cancelled" | "lease_lost";
};
/** `POST /v1/jobs/heartbeat` answer. */
export type HeartbeatBatchResponse = { results: HeartbeatOutcome[] };

// ---------------------------------------------------------------------------------------------
// Durable steps, sleeps and signals (docs/durable.md, "Over HTTP").

/** A recorded step: `{name, result, recorded_at, attempt, lease_token}` (`faultline:…` names are the server's own). */
export type Step<R = unknown> = Omit<Schemas["Step"], "result"> & { result?: R | null };
/** `GET /v1/jobs/{id}/steps` answer. */
export type StepsResponse = { steps: Step[] };
/** `POST /v1/jobs/{id}/sleep` answer: `sleeping` (the job was put back: stop, report nothing) or `over` (go on). */
export type SleepResponse = Omit<Schemas["SleepResponse"], "state"> & { state: "sleeping" | "over" };
/** `POST /v1/jobs/{id}/wait` answer: `signalled` (with `payload`), `timed_out`, or `parked` (the job now waits: stop, report nothing). */
export type WaitResponse<P = unknown> = Omit<Schemas["WaitResponse"], "outcome" | "payload"> & {
  outcome: "signalled" | "timed_out" | "parked";
  payload?: P | null;
};
/** `POST /v1/jobs/{id}/signals/{name}` answer: `kept` is false when a signal of that name had been sent already. */
export type SignalResponse = Schemas["SignalResponse"];
