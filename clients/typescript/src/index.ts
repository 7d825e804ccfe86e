export { Client, enqueueBody } from "./client.js";
export type { ClientOptions, EnqueueOptions, EnqueueResult, BatchJob, ListJobsOptions, RequestOptions, FailOptions, RecordedStep } from "./client.js";
export { Worker, JobStoppedError, JobSuspendedError } from "./worker.js";
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
  LeaseItem,
  HeartbeatOutcome,
  FailRequest,
  ReleaseRequest,
  Step,
  StepsResponse,
  SleepResponse,
  WaitResponse,
  SignalResponse,
} from "./types.js";
export type { components, paths } from "./generated/schema.js";
