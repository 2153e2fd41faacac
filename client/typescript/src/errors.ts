/**
 * `AgentflowError`: a failed call with its rich status details decoded.
 *
 * The server sends every error as a `google.rpc.Status` in the `grpc-status-details-bin` trailer,
 * with an `ErrorInfo` (the reason), a `BadRequest` (the invalid fields) for invalid input, and a
 * `RetryInfo` where waiting helps. grpc-js hands that trailer over undecoded; this module decodes it
 * with the messages ts-proto generated from googleapis' `google/rpc/*.proto`.
 */

import { Metadata, type ServiceError, status } from "@grpc/grpc-js";

import type { FieldViolation, ItemError } from "./gen/agentflow/payments/v1/common";
import { BadRequest, ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import type { Reason } from "./reasons";

export type { FieldViolation } from "./gen/agentflow/payments/v1/common";

const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

/**
 * A call the service refused or could not complete.
 *
 * `message` reads `"<CODE> <reason>: <details>"`, as the Python SDK's `str(error)` does; the
 * server's own message is {@link AgentflowError.details}. The grpc-js `ServiceError` it was decoded
 * from is `cause`.
 */
export class AgentflowError extends Error {
  /** The gRPC status code (grpc-js `status`, e.g. `status.FAILED_PRECONDITION`). */
  readonly code: status;
  /**
   * The `ErrorInfo` reason: one of {@link Reason} when this SDK knows it, else the raw string a
   * newer server sent. Errors without an `ErrorInfo` (a transport failure, a deadline) have the
   * status code's name here, e.g. `"UNAVAILABLE"`.
   */
  readonly reason: Reason | string;
  /** The status message, for people. */
  readonly details: string;
  /** The `BadRequest` field violations, for invalid input: `[{ field: "amount", description }]`. */
  readonly fieldViolations: readonly FieldViolation[];
  /** The `ErrorInfo` metadata: details a program can act on. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The `RetryInfo` delay in milliseconds where waiting helps, else `undefined`. */
  readonly retryDelayMs: number | undefined;

  constructor(
    code: status,
    reason: Reason | string,
    details: string,
    extra: {
      fieldViolations?: readonly FieldViolation[];
      metadata?: Readonly<Record<string, string>>;
      retryDelayMs?: number;
      cause?: unknown;
    } = {},
  ) {
    super(`${codeName(code)} ${reason}: ${details}`, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "AgentflowError";
    this.code = code;
    this.reason = reason;
    this.details = details;
    this.fieldViolations = Object.freeze([...(extra.fieldViolations ?? [])]);
    this.metadata = Object.freeze({ ...(extra.metadata ?? {}) });
    this.retryDelayMs = extra.retryDelayMs;
  }

  /** The status code's name, e.g. `"FAILED_PRECONDITION"`. */
  get codeName(): string {
    return codeName(this.code);
  }

  /**
   * The `AgentflowError` for a failed grpc-js call (what the generated service clients pass their
   * callbacks, or a stream emits), with its `grpc-status-details-bin` trailer decoded. An
   * `AgentflowError` is returned as it is.
   */
  static fromServiceError(error: ServiceError | AgentflowError): AgentflowError {
    if (error instanceof AgentflowError) {
      return error;
    }
    let details = error.details ?? "";
    let reason = "";
    let metadata: Record<string, string> = {};
    const fieldViolations: FieldViolation[] = [];
    let retryDelayMs: number | undefined;
    const trailers = error.metadata instanceof Metadata ? error.metadata.get(STATUS_DETAILS_KEY) : [];
    for (const value of trailers) {
      if (!Buffer.isBuffer(value)) {
        continue;
      }
      const rpcStatus = Status.decode(value);
      details = rpcStatus.message || details;
      for (const any of rpcStatus.details) {
        switch (any.typeUrl.startsWith(TYPE_PREFIX) ? any.typeUrl.slice(TYPE_PREFIX.length) : any.typeUrl) {
          case "google.rpc.ErrorInfo": {
            const info = ErrorInfo.decode(any.value);
            reason = info.reason;
            metadata = { ...info.metadata };
            break;
          }
          case "google.rpc.BadRequest":
            for (const violation of BadRequest.decode(any.value).fieldViolations) {
              fieldViolations.push({ field: violation.field, description: violation.description });
            }
            break;
          case "google.rpc.RetryInfo": {
            const delay = RetryInfo.decode(any.value).retryDelay;
            if (delay !== undefined) {
              retryDelayMs = Number(delay.seconds) * 1000 + Math.round(delay.nanos / 1e6);
            }
            break;
          }
        }
      }
    }
    return new AgentflowError(error.code, reason || codeName(error.code), details, {
      fieldViolations,
      metadata,
      retryDelayMs,
      cause: error,
    });
  }

  /** The `AgentflowError` for one refused item of a batch call (`SubmitPaymentResult.error`). */
  static fromItemError(item: ItemError): AgentflowError {
    return new AgentflowError(item.code, item.reason || codeName(item.code), item.message, {
      fieldViolations: item.fieldViolations.map(({ field, description }) => ({ field, description })),
      metadata: item.metadata,
    });
  }
}

/** Whether `error` looks like a grpc-js `ServiceError` (a failed call's error). */
export function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ServiceError>).code === "number" &&
    (error as Partial<ServiceError>).metadata instanceof Metadata
  );
}

function codeName(code: status): string {
  return status[code] ?? `CODE_${code}`;
}
