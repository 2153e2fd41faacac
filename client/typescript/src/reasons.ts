/**
 * The catalogue of error reasons: the `reason` of the `google.rpc.ErrorInfo` every error of the
 * service carries (in the domain {@link ERROR_DOMAIN}), and the gRPC status code each always comes with.
 *
 * It mirrors `client/agentflow_payments/_reasons.py`, the one list the server raises from;
 * test/reasons.test.ts fails when the two differ.
 */

import { status } from "@grpc/grpc-js";

/** The `ErrorInfo.domain` of the service's errors. */
export const ERROR_DOMAIN = "agentflow.payments";

/** Why a call failed, as carried in `ErrorInfo.reason`. The names are a stable contract. */
export const Reason = {
  /**
   * A request field is missing or malformed; the BadRequest detail names each field. Fix the
   * request.
   */
  INVALID_FIELD: "INVALID_FIELD",
  /** The token is not one the service accepts; see AccountService.ListTokens. */
  INVALID_TOKEN: "INVALID_TOKEN",
  /** No `authorization: Bearer <api key>` metadata was sent. */
  API_KEY_MISSING: "API_KEY_MISSING",
  /** The API key is not one the service issued. */
  API_KEY_INVALID: "API_KEY_INVALID",
  /** The API key was revoked; ask an admin for a new one. */
  API_KEY_REVOKED: "API_KEY_REVOKED",
  /** The API key passed its expiry time; ask an admin for a new one. */
  API_KEY_EXPIRED: "API_KEY_EXPIRED",
  /** The API key's scope does not allow this method; metadata names the scope it needs. */
  SCOPE_DENIED: "SCOPE_DENIED",
  /** The API key is not bound to the address the request acts for. */
  ADDRESS_NOT_ALLOWED: "ADDRESS_NOT_ALLOWED",
  /** The API key's rate limit is spent; RetryInfo says when to come back. */
  RATE_LIMIT_EXCEEDED: "RATE_LIMIT_EXCEEDED",
  /** The settlement queue is at its configured size; retry after the delay in RetryInfo. */
  QUEUE_FULL: "QUEUE_FULL",
  /** The available balance does not cover amount plus fee; deposit more or pay less. */
  INSUFFICIENT_BALANCE: "INSUFFICIENT_BALANCE",
  /** The request_id was already used with a different request; use a new request_id. */
  IDEMPOTENCY_CONFLICT: "IDEMPOTENCY_CONFLICT",
  /** No payment has that name (or the key may not see it). */
  PAYMENT_NOT_FOUND: "PAYMENT_NOT_FOUND",
  /** The payment is no longer queued: it is being settled or is final. */
  PAYMENT_NOT_CANCELLABLE: "PAYMENT_NOT_CANCELLABLE",
  /** No settlement batch has that name. */
  BATCH_NOT_FOUND: "BATCH_NOT_FOUND",
  /** No escrow has that name (or the key may not see it). */
  ESCROW_NOT_FOUND: "ESCROW_NOT_FOUND",
  /** The escrow is resolved, disputed or expired, so this step no longer applies. */
  ESCROW_NOT_ACTIVE: "ESCROW_NOT_ACTIVE",
  /** The task result's signature is not the escrow verifier's; nothing changed. */
  ESCROW_INVALID_ATTESTATION: "ESCROW_INVALID_ATTESTATION",
  /** No webhook endpoint has that name (or the key may not see it). */
  WEBHOOK_NOT_FOUND: "WEBHOOK_NOT_FOUND",
  /** No webhook delivery has that name. */
  WEBHOOK_DELIVERY_NOT_FOUND: "WEBHOOK_DELIVERY_NOT_FOUND",
  /**
   * The webhook URL's host is (or resolves to) a loopback, private, link-local or metadata
   * address, or does not resolve; use a public endpoint.
   */
  WEBHOOK_URL_NOT_ALLOWED: "WEBHOOK_URL_NOT_ALLOWED",
  /** The webhook endpoint is disabled; enable it with UpdateWebhook first. */
  WEBHOOK_DISABLED: "WEBHOOK_DISABLED",
  /** The delivery already succeeded; there is nothing to retry. */
  WEBHOOK_DELIVERY_SUCCEEDED: "WEBHOOK_DELIVERY_SUCCEEDED",
  /** No API key has that name. */
  API_KEY_NOT_FOUND: "API_KEY_NOT_FOUND",
  /**
   * The event stream fell too far behind; resume with start_after set to the `last_sequence`
   * metadata.
   */
  SUBSCRIBER_TOO_SLOW: "SUBSCRIBER_TOO_SLOW",
  /** The method is part of the v1 contract but this server does not serve it yet. */
  NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
  /** The server is shutting down; retry against another replica or later. */
  SHUTTING_DOWN: "SHUTTING_DOWN",
  /**
   * The ledger database did not answer; nothing was changed. Retry after the delay in RetryInfo.
   */
  STORAGE_UNAVAILABLE: "STORAGE_UNAVAILABLE",
  /**
   * This server does not settle on chain (an accept-only replica); ask one that does for deposit
   * details.
   */
  SETTLEMENT_UNAVAILABLE: "SETTLEMENT_UNAVAILABLE",
  /** An unexpected server error; the server logged it with the method and time. */
  INTERNAL: "INTERNAL",
} as const;

/** One of the reasons of {@link Reason}. */
export type Reason = (typeof Reason)[keyof typeof Reason];

/** Every reason, in catalogue order. */
export const REASONS: readonly Reason[] = Object.freeze(Object.values(Reason));

/** The gRPC status code that always accompanies each reason. */
export const REASON_CODES: Readonly<Record<Reason, status>> = Object.freeze({
  INVALID_FIELD: status.INVALID_ARGUMENT,
  INVALID_TOKEN: status.INVALID_ARGUMENT,
  API_KEY_MISSING: status.UNAUTHENTICATED,
  API_KEY_INVALID: status.UNAUTHENTICATED,
  API_KEY_REVOKED: status.UNAUTHENTICATED,
  API_KEY_EXPIRED: status.UNAUTHENTICATED,
  SCOPE_DENIED: status.PERMISSION_DENIED,
  ADDRESS_NOT_ALLOWED: status.PERMISSION_DENIED,
  RATE_LIMIT_EXCEEDED: status.RESOURCE_EXHAUSTED,
  QUEUE_FULL: status.RESOURCE_EXHAUSTED,
  INSUFFICIENT_BALANCE: status.FAILED_PRECONDITION,
  IDEMPOTENCY_CONFLICT: status.ALREADY_EXISTS,
  PAYMENT_NOT_FOUND: status.NOT_FOUND,
  PAYMENT_NOT_CANCELLABLE: status.FAILED_PRECONDITION,
  BATCH_NOT_FOUND: status.NOT_FOUND,
  ESCROW_NOT_FOUND: status.NOT_FOUND,
  ESCROW_NOT_ACTIVE: status.FAILED_PRECONDITION,
  ESCROW_INVALID_ATTESTATION: status.PERMISSION_DENIED,
  WEBHOOK_NOT_FOUND: status.NOT_FOUND,
  WEBHOOK_DELIVERY_NOT_FOUND: status.NOT_FOUND,
  WEBHOOK_URL_NOT_ALLOWED: status.INVALID_ARGUMENT,
  WEBHOOK_DISABLED: status.FAILED_PRECONDITION,
  WEBHOOK_DELIVERY_SUCCEEDED: status.FAILED_PRECONDITION,
  API_KEY_NOT_FOUND: status.NOT_FOUND,
  SUBSCRIBER_TOO_SLOW: status.RESOURCE_EXHAUSTED,
  NOT_IMPLEMENTED: status.UNIMPLEMENTED,
  SHUTTING_DOWN: status.UNAVAILABLE,
  STORAGE_UNAVAILABLE: status.UNAVAILABLE,
  SETTLEMENT_UNAVAILABLE: status.FAILED_PRECONDITION,
  INTERNAL: status.INTERNAL,
});

/** Whether `value` is a reason this SDK knows (a newer server may send others). */
export function isReason(value: string): value is Reason {
  return (REASONS as readonly string[]).includes(value);
}
