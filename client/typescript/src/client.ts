/**
 * `AgentflowClient`: one channel to AgentFlow Payments, its six generated service clients, the API
 * key on every call, promise helpers for the common unary calls, async iterators for the streams,
 * and errors decoded into {@link AgentflowError}.
 */

import {
  type CallOptions,
  Channel,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientOptions,
  type ClientReadableStream,
  type ClientUnaryCall,
  credentials,
  InterceptingCall,
  type Interceptor,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";

import { type Balance, AccountServiceClient, GetBalancesRequest } from "./gen/agentflow/payments/v1/accounts";
import { AdminServiceClient } from "./gen/agentflow/payments/v1/admin";
import {
  CreateEscrowRequest,
  type Escrow,
  EscrowServiceClient,
  GetEscrowRequest,
  RefundEscrowRequest,
  ReleaseEscrowRequest,
} from "./gen/agentflow/payments/v1/escrow";
import {
  type Event,
  type EventFilter,
  EventServiceClient,
  SubscribeEventsRequest,
} from "./gen/agentflow/payments/v1/events";
import {
  GetPaymentRequest,
  Payment,
  PaymentServiceClient,
  PaymentStatus,
  SubmitPaymentRequest,
  SubmitPaymentsRequest,
  WatchPaymentRequest,
} from "./gen/agentflow/payments/v1/payments";
import { WebhookServiceClient } from "./gen/agentflow/payments/v1/webhooks";
import { AgentflowError, isServiceError } from "./errors";
import { Reason } from "./reasons";

/** Milliseconds a unary call may take when the caller sets no deadline. Streams get none. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * The channel options every client starts from. Long event streams sit idle for minutes: a ping every
 * minute, answered within 20 s, notices a dead connection (the server's heartbeats cover the
 * application level). The same as the Python SDK's.
 */
export const CHANNEL_OPTIONS: Readonly<ChannelOptions> = Object.freeze({
  "grpc.keepalive_time_ms": 60_000,
  "grpc.keepalive_timeout_ms": 20_000,
  "grpc.http2.max_pings_without_data": 0,
});

/** How to connect: the API key, TLS, the default deadline. */
export interface AgentflowClientOptions {
  /** The API key, sent as `authorization: Bearer <apiKey>` on every call; `""` for none (health). */
  apiKey: string;
  /** Use TLS, with the system's CA bundle unless `rootCerts` is given. Default: plaintext. */
  tls?: boolean;
  /** PEM root certificates to trust (implies `tls`). */
  rootCerts?: Buffer;
  /** The deadline of unary calls that set none, in milliseconds; 0 for none. Default 30 000. */
  timeoutMs?: number;
  /** Extra grpc-js channel options, on top of {@link CHANNEL_OPTIONS}. */
  channelOptions?: ChannelOptions;
}

/** Per-call options of the helpers. */
export interface RequestOptions {
  /** This call's deadline in milliseconds, instead of the client's `timeoutMs`. */
  timeoutMs?: number;
}

/** How a stream helper resumes after the connection breaks. */
export interface StreamOptions {
  /** The longest pause between reconnection attempts, in milliseconds. Default 5 000. */
  maxBackoffMs?: number;
}

/** Options of {@link AgentflowClient.subscribeEvents}. */
export interface SubscribeOptions extends StreamOptions {
  /** Start after this event sequence number (a cursor you kept); default 0, the log's start. */
  startAfter?: string | number | bigint;
  /** Only events from now on, nothing replayed. */
  liveOnly?: boolean;
}

type Builtin = Date | Function | Uint8Array | string | number | boolean | undefined;

/**
 * A request as an object literal: every field optional, nested messages too (absent fields take the
 * proto default). The same shape as the generated `fromPartial` methods take.
 */
export type DeepPartial<T> = T extends Builtin
  ? T
  : T extends Array<infer U>
    ? Array<DeepPartial<U>>
    : T extends ReadonlyArray<infer U>
      ? ReadonlyArray<DeepPartial<U>>
      : T extends {}
        ? { [K in keyof T]?: DeepPartial<T[K]> }
        : Partial<T>;

/** A generated client's unary method, in the overload that takes metadata and options. */
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

const FINAL_STATUSES: ReadonlySet<PaymentStatus> = new Set([
  PaymentStatus.PAYMENT_STATUS_COMPLETED,
  PaymentStatus.PAYMENT_STATUS_FAILED,
  PaymentStatus.PAYMENT_STATUS_CANCELLED,
]);

/**
 * A connection to AgentFlow Payments.
 *
 * Each service of the v1 API is a property holding its generated @grpc/grpc-js client (ts-proto):
 * `payments`, `escrows`, `webhooks`, `events`, `accounts` and `admin`, all on one channel. Every call
 * they make carries `authorization: Bearer <apiKey>` and, when unary, a deadline of `timeoutMs`
 * unless it sets its own. Their callbacks get grpc-js `ServiceError`s: turn one into an
 * {@link AgentflowError} with `AgentflowError.fromServiceError`. The helper methods (`submitPayment`,
 * `getPayment`, `createEscrow`, ...) return promises of the resource and reject with
 * {@link AgentflowError} already.
 *
 * ```ts
 * const client = new AgentflowClient("127.0.0.1:50051", { apiKey: process.env.AGENTFLOW_API_KEY! });
 * const payment = await client.submitPayment({ payer, payee, token: "USDC", amount: "1500000" });
 * for await (const state of client.watchPayment(payment.name)) console.log(state.status);
 * client.close();
 * ```
 */
export class AgentflowClient {
  /** `PaymentService`: submit, get, list, cancel, quote and watch payments; settlement batches. */
  readonly payments: PaymentServiceClient;
  /** `EscrowService`: task escrows, their release, refund, dispute and attested results. */
  readonly escrows: EscrowServiceClient;
  /** `WebhookService`: webhook endpoints and their deliveries. */
  readonly webhooks: WebhookServiceClient;
  /** `EventService`: the event log, listed or streamed. */
  readonly events: EventServiceClient;
  /** `AccountService`: balances, ledger entries, withdrawals, tokens, deposit details. */
  readonly accounts: AccountServiceClient;
  /** `AdminService`: API keys and metrics (an admin key). */
  readonly admin: AdminServiceClient;

  private readonly channel: Channel;
  /** The streams the iterator helpers have open, cancelled by {@link close}. */
  private readonly openStreams = new Set<ClientReadableStream<unknown>>();
  private closed = false;

  /**
   * @param target `host:port` of the server.
   * @param options the API key, TLS and default deadline.
   */
  constructor(target: string, options: AgentflowClientOptions) {
    const useTls = options.tls === true || options.rootCerts !== undefined;
    const channelCredentials: ChannelCredentials = useTls
      ? credentials.createSsl(options.rootCerts ?? null)
      : credentials.createInsecure();
    this.channel = new Channel(target, channelCredentials, { ...CHANNEL_OPTIONS, ...options.channelOptions });
    const clientOptions: ClientOptions = {
      channelOverride: this.channel,
      interceptors: [callDefaults(options.apiKey, options.timeoutMs ?? DEFAULT_TIMEOUT_MS)],
    };
    this.payments = new PaymentServiceClient(target, channelCredentials, clientOptions);
    this.escrows = new EscrowServiceClient(target, channelCredentials, clientOptions);
    this.webhooks = new WebhookServiceClient(target, channelCredentials, clientOptions);
    this.events = new EventServiceClient(target, channelCredentials, clientOptions);
    this.accounts = new AccountServiceClient(target, channelCredentials, clientOptions);
    this.admin = new AdminServiceClient(target, channelCredentials, clientOptions);
  }

  /**
   * Close the client: the streams of {@link watchPayment} and {@link subscribeEvents} are cancelled and
   * their loops end; new calls fail. Unary calls in flight, and streams opened on the raw service
   * clients, run to their end (grpc-js closes a channel without cancelling its calls).
   */
  close(): void {
    this.closed = true;
    for (const call of this.openStreams) {
      call.cancel();
    }
    this.channel.close();
  }

  /**
   * Submit one payment; resolves once it is durably accepted (`PAYMENT_STATUS_QUEUED`, with its fee
   * and name). Rejects with `INSUFFICIENT_BALANCE`, `INVALID_FIELD` (naming the field),
   * `QUEUE_FULL`, `IDEMPOTENCY_CONFLICT`, `ADDRESS_NOT_ALLOWED`...
   */
  async submitPayment(request: DeepPartial<SubmitPaymentRequest>, options?: RequestOptions): Promise<Payment> {
    const response = await this.unary(
      this.payments.submitPayment.bind(this.payments),
      SubmitPaymentRequest.fromPartial(request),
      options,
    );
    return present(response.payment, "payment");
  }

  /**
   * Submit many payments in one call: for each request, in order, its `Payment` or the
   * {@link AgentflowError} that refused it (one item's refusal does not refuse the others).
   */
  async submitPayments(
    requests: ReadonlyArray<DeepPartial<SubmitPaymentRequest>>,
    options?: RequestOptions,
  ): Promise<Array<Payment | AgentflowError>> {
    const request = SubmitPaymentsRequest.fromPartial({ requests: requests.map(SubmitPaymentRequest.fromPartial) });
    const response = await this.unary(this.payments.submitPayments.bind(this.payments), request, options);
    const results: Array<Payment | AgentflowError> = requests.map(
      () => new AgentflowError(status.INTERNAL, "MISSING_RESULT", "the server sent no result for this item"),
    );
    for (const result of response.results) {
      if (result.payment !== undefined) {
        results[result.index] = result.payment;
      } else if (result.error !== undefined) {
        results[result.index] = AgentflowError.fromItemError(result.error);
      }
    }
    return results;
  }

  /** The payment named `name` (`payments/...`). Rejects with `PAYMENT_NOT_FOUND` when unknown. */
  async getPayment(name: string, options?: RequestOptions): Promise<Payment> {
    const response = await this.unary(
      this.payments.getPayment.bind(this.payments),
      GetPaymentRequest.fromPartial({ name }),
      options,
    );
    return present(response.payment, "payment");
  }

  /**
   * A payment's state now, then each change until it is COMPLETED, FAILED or CANCELLED, after which
   * the iteration ends. Breaking out of the loop cancels the stream.
   *
   * When the stream breaks (UNAVAILABLE, or CANCELLED by the server or a lost connection) it
   * reconnects with growing pauses up to `maxBackoffMs`; the server sends the current state again,
   * which is yielded only if it changed. Other errors (`PAYMENT_NOT_FOUND`, a key that may not see
   * it) are thrown as {@link AgentflowError}.
   */
  async *watchPayment(name: string, options: StreamOptions = {}): AsyncGenerator<Payment, void, undefined> {
    const backoff = new Backoff(options.maxBackoffMs);
    let last: Uint8Array | undefined;
    while (!this.closed) {
      try {
        const call = this.payments.watchPayment(WatchPaymentRequest.fromPartial({ name }));
        for await (const response of this.iterate(call)) {
          backoff.reset();
          const payment = response.payment;
          if (payment === undefined) {
            continue;
          }
          // Compare whole encodings: Date keeps milliseconds only, so update_time alone could
          // hide a change within the same millisecond.
          const encoded = Payment.encode(payment).finish();
          if (last === undefined || Buffer.compare(encoded, last) !== 0) {
            last = encoded;
            yield payment;
          }
          if (FINAL_STATUSES.has(payment.status)) {
            return;
          }
        }
      } catch (error) {
        if (this.closed) {
          return;
        }
        if (!resumable(error)) {
          throw error;
        }
      }
      await backoff.wait();
    }
  }

  /**
   * The events matching `filter` after `startAfter` (or from now, with `liveOnly`), then live, for as
   * long as the caller iterates; break out of the loop to stop.
   *
   * When the stream breaks (the server restarts, is unreachable, or ends it as `SUBSCRIBER_TOO_SLOW`)
   * it reconnects with growing pauses up to `maxBackoffMs` and resumes after the last event it
   * yielded: no event is skipped or yielded twice. Heartbeats are consumed here: an idle heartbeat
   * moves the cursor to the log's head, so a resume does not replay what the filter passed over.
   * Other errors (a bad filter, a key that may not) are thrown as {@link AgentflowError}.
   */
  async *subscribeEvents(
    filter?: DeepPartial<EventFilter>,
    options: SubscribeOptions = {},
  ): AsyncGenerator<Event, void, undefined> {
    const backoff = new Backoff(options.maxBackoffMs);
    let last = BigInt(options.startAfter ?? 0);
    // With liveOnly the cursor is unknown until the first event or heartbeat: a reconnect before
    // that starts from "now" again.
    let known = options.liveOnly !== true;
    while (!this.closed) {
      const request = SubscribeEventsRequest.fromPartial({ filter, startAfter: last.toString(), liveOnly: !known });
      try {
        for await (const response of this.iterate(this.events.subscribeEvents(request))) {
          backoff.reset();
          if (response.event !== undefined) {
            const sequence = BigInt(response.event.sequence);
            if (known && sequence <= last) {
              continue;
            }
            last = sequence;
            known = true;
            yield response.event;
          } else if (response.heartbeat !== undefined) {
            const head = BigInt(response.heartbeat.headSequence);
            last = head > last ? head : last;
            known = true;
          }
        }
      } catch (error) {
        if (this.closed) {
          return;
        }
        if (!resumable(error)) {
          throw error;
        }
      }
      await backoff.wait();
    }
  }

  /**
   * Put `amount` of `token` in escrow from `payer` for `payee`'s task: it moves with its fee from the
   * payer's available balance to escrowed. Rejects with `INSUFFICIENT_BALANCE`, `INVALID_FIELD`...
   */
  async createEscrow(request: DeepPartial<CreateEscrowRequest>, options?: RequestOptions): Promise<Escrow> {
    const response = await this.unary(
      this.escrows.createEscrow.bind(this.escrows),
      CreateEscrowRequest.fromPartial(request),
      options,
    );
    return present(response.escrow, "escrow");
  }

  /** The escrow named `name` (`escrows/...`). Rejects with `ESCROW_NOT_FOUND` when unknown. */
  async getEscrow(name: string, options?: RequestOptions): Promise<Escrow> {
    const response = await this.unary(
      this.escrows.getEscrow.bind(this.escrows),
      GetEscrowRequest.fromPartial({ name }),
      options,
    );
    return present(response.escrow, "escrow");
  }

  /**
   * Release an escrow to its payee, whole or `amount` of it (a milestone): the escrow as it is now,
   * and the settlement payment the release became (`PAYMENT_STATUS_QUEUED`; follow it with
   * {@link watchPayment}). Rejects with `ESCROW_NOT_ACTIVE` once it is resolved.
   */
  async releaseEscrow(
    request: DeepPartial<ReleaseEscrowRequest>,
    options?: RequestOptions,
  ): Promise<{ escrow: Escrow; payment: Payment }> {
    const response = await this.unary(
      this.escrows.releaseEscrow.bind(this.escrows),
      ReleaseEscrowRequest.fromPartial(request),
      options,
    );
    return { escrow: present(response.escrow, "escrow"), payment: present(response.payment, "payment") };
  }

  /** Refund what an escrow holds to its payer (the payee, an admin, or the arbiter may). */
  async refundEscrow(request: DeepPartial<RefundEscrowRequest>, options?: RequestOptions): Promise<Escrow> {
    const response = await this.unary(
      this.escrows.refundEscrow.bind(this.escrows),
      RefundEscrowRequest.fromPartial(request),
      options,
    );
    return present(response.escrow, "escrow");
  }

  /**
   * The balances of `address`, one per token (only `tokens` when given): available, reserved,
   * escrowed and total, in base units.
   */
  async getBalances(address: string, tokens: readonly string[] = [], options?: RequestOptions): Promise<Balance[]> {
    const response = await this.unary(
      this.accounts.getBalances.bind(this.accounts),
      GetBalancesRequest.fromPartial({ address, tokens: [...tokens] }),
      options,
    );
    return response.balances;
  }

  /**
   * The messages of a server stream, with its failure thrown as an {@link AgentflowError}. Leaving the
   * loop early, or {@link close}, cancels the call.
   */
  private async *iterate<T>(call: ClientReadableStream<T>): AsyncGenerator<T, void, undefined> {
    // grpc-js reports a cancelled call with an 'error' event; once the loop below has let go of the
    // stream nobody else listens, and an unheard 'error' would crash the process.
    call.on("error", () => {});
    this.openStreams.add(call);
    try {
      for await (const message of call) {
        yield message as T;
      }
    } catch (error) {
      throw isServiceError(error) ? AgentflowError.fromServiceError(error) : error;
    } finally {
      this.openStreams.delete(call);
      // A no-op when the call already ended; cancels it when the caller stopped iterating.
      call.cancel();
    }
  }

  /** Run a unary call as a promise that rejects with an {@link AgentflowError}. */
  private unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, options?: RequestOptions): Promise<Res> {
    const callOptions: Partial<CallOptions> = {};
    if (options?.timeoutMs !== undefined && options.timeoutMs > 0) {
      callOptions.deadline = new Date(Date.now() + options.timeoutMs);
    }
    return new Promise((resolve, reject) => {
      method(request, new Metadata(), callOptions, (error, response) => {
        if (error) {
          reject(AgentflowError.fromServiceError(error));
        } else {
          resolve(response);
        }
      });
    });
  }
}

/**
 * The interceptor every call goes through: the API key as `authorization` metadata (unless the call
 * sets its own), and the default deadline on unary calls. An interceptor rather than call
 * credentials because grpc-js sends call credentials over TLS only, and the dev server is plaintext.
 */
function callDefaults(apiKey: string, timeoutMs: number): Interceptor {
  return (options, nextCall) => {
    if (options.deadline === undefined && !options.method_definition.responseStream && timeoutMs > 0) {
      options = { ...options, deadline: new Date(Date.now() + timeoutMs) };
    }
    return new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        if (apiKey !== "" && metadata.get("authorization").length === 0) {
          metadata.set("authorization", `Bearer ${apiKey}`);
        }
        next(metadata, listener);
      },
    });
  };
}

/** Whether a stream that failed this way is worth reopening (the Python SDK resumes on the same). */
function resumable(error: unknown): boolean {
  return (
    error instanceof AgentflowError &&
    (error.code === status.UNAVAILABLE ||
      error.code === status.CANCELLED ||
      error.reason === Reason.SUBSCRIBER_TOO_SLOW)
  );
}

/** Exponential pauses between reconnections: 100 ms, doubling up to a ceiling. */
class Backoff {
  private pauseMs = 100;

  constructor(private readonly maxMs = 5_000) {}

  reset(): void {
    this.pauseMs = 100;
  }

  async wait(): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, this.pauseMs));
    this.pauseMs = Math.min(this.maxMs, this.pauseMs * 2);
  }
}

/** A response's resource field, which the server always sets. */
function present<T>(value: T | undefined, field: string): T {
  if (value === undefined) {
    throw new AgentflowError(status.INTERNAL, "MISSING_FIELD", `the server's response has no ${field}`);
  }
  return value;
}
