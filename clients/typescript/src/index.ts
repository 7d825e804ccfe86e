export { Client, enqueueBody } from "./client.js";
export type { ClientOptions, EnqueueOptions, EnqueueResult, BatchJob, ListJobsOptions, RequestOptions, FailOptions } from "./client.js";
export { Worker, JobStoppedError } from "./worker.js";
export type { WorkerOptions, Handler, JobContext, StopReason, Logger, WorkerTestHooks } from "./worker.js";
export {
  FaultlineError,
  ApiError,
  InvalidInputError,
  UnauthorizedError,
  NotFoundError,
  ConflictError,
  LeaseLostError,
  UnavailableError,
  FaultlineConnectionError,
  FaultlineTimeoutError,
  RetryableError,
  PermanentError,
} from "./errors.js";
export type { ApiErrorBody } from "./errors.js";
export type {
  Job,
  JobState,
  AttemptError,
  EnqueueRequest,
  BatchResult,
  Page,
  ErrorDetail,
  ClaimRequest,
  ClaimResponse,
  HeartbeatRequest,
  HeartbeatResponse,
  CompleteRequest,
  CompleteItem,
  CompleteOutcome,
  FailRequest,
  ReleaseRequest,
} from "./types.js";
export type { components, paths } from "./generated/schema.js";
