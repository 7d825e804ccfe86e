/**
 * Typed errors. Every error this package throws is a {@link FaultlineError}; an answer of the
 * server that is not a success is an {@link ApiError} (or one of its subclasses), a request that
 * got no answer is a {@link FaultlineConnectionError}.
 */

/** The base of every error this package throws. */
export class FaultlineError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The body of an error answer: `{"error": {"code", "message", "field"?, "job_id"?}}`. */
export interface ApiErrorBody {
  code: string;
  message: string;
  field?: string | null;
  job_id?: string | null;
  [key: string]: unknown;
}

/** The server answered with an error status. */
export class ApiError extends FaultlineError {
  /** The HTTP status. */
  readonly status: number;
  /** The machine-readable code (`not_found`, `invalid_field`, `lease_lost`, …). */
  readonly code: string;
  /** The field a 422 names, if any. */
  readonly field: string | undefined;
  /** The job a 409 names, if any. */
  readonly jobId: string | undefined;
  /** The whole `error` object of the answer. */
  readonly body: ApiErrorBody;
  /** `Retry-After` in milliseconds, when the server sent one (503 while the database is down). */
  readonly retryAfterMs: number | undefined;

  constructor(status: number, body: ApiErrorBody, retryAfterMs?: number) {
    super(`${status} ${body.code}: ${body.message}`);
    this.status = status;
    this.code = body.code;
    this.field = body.field ?? undefined;
    this.jobId = body.job_id ?? undefined;
    this.body = body;
    this.retryAfterMs = retryAfterMs;
  }
}

/** 400 or 422: the request was refused as invalid; nothing was written. */
export class InvalidInputError extends ApiError {}

/** 401: a token is needed, or the one sent is wrong. */
export class UnauthorizedError extends ApiError {}

/** 404: no such job (or route). */
export class NotFoundError extends ApiError {}

/** 409: the request conflicts with the job's state (idempotency key reused, job already finished, …). */
export class ConflictError extends ApiError {}

/**
 * 409 `lease_lost`: the lease token is no longer current (the lease expired and the job was
 * taken back, or it was cancelled). The report changed nothing.
 */
export class LeaseLostError extends ConflictError {}

/** 503 and other 5xx answers: the server (or its database) is unavailable for now. */
export class UnavailableError extends ApiError {}

/**
 * The request got no answer: connection refused or reset, DNS failure, or the client's timeout.
 * (Named so as not to shadow a global `ConnectionError`.) Whether a write took effect is unknown.
 */
export class FaultlineConnectionError extends FaultlineError {}

/** The request took longer than the client's `timeoutMs`. */
export class FaultlineTimeoutError extends FaultlineConnectionError {}

/** The error class for an answer with `status` and `body`. */
export function apiErrorFor(status: number, body: ApiErrorBody, retryAfterMs?: number): ApiError {
  if (status === 409 && body.code === "lease_lost") return new LeaseLostError(status, body, retryAfterMs);
  if (status === 409) return new ConflictError(status, body, retryAfterMs);
  if (status === 404) return new NotFoundError(status, body, retryAfterMs);
  if (status === 401) return new UnauthorizedError(status, body, retryAfterMs);
  if (status === 400 || status === 422) return new InvalidInputError(status, body, retryAfterMs);
  if (status >= 500) return new UnavailableError(status, body, retryAfterMs);
  return new ApiError(status, body, retryAfterMs);
}

/**
 * Thrown by a handler: the attempt failed and another attempt may succeed. `afterMs` asks the
 * server to wait at least that long before the next attempt (instead of its backoff).
 */
export class RetryableError extends Error {
  readonly afterMs: number | undefined;
  constructor(message: string, options?: { afterMs?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "RetryableError";
    this.afterMs = options?.afterMs;
  }
}

/** Thrown by a handler: no retry can fix this; the job fails for good. */
export class PermanentError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PermanentError";
  }
}
