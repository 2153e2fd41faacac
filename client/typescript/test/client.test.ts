/**
 * AgentflowClient against a scripted grpc-js server built from the generated service definitions:
 * what every call sends (the key, the default deadline), how rich errors are decoded (including a
 * RetryInfo, which the dev server has no easy way to produce), and how the event stream resumes.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  Metadata,
  Server,
  type ServerUnaryCall,
  type ServerWritableStream,
  ServerCredentials,
  type sendUnaryData,
  type ServerErrorResponse,
  status,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";

import {
  AgentflowClient,
  AgentflowError,
  Event,
  EventServiceService,
  type GetPaymentRequest,
  type GetPaymentResponse,
  Payment,
  PaymentServiceService,
  PaymentStatus,
  Reason,
  rpc,
  type SubscribeEventsRequest,
  type SubscribeEventsResponse,
  type WatchPaymentRequest,
  type WatchPaymentResponse,
} from "@agentflow/payments";

/** What the scripted server saw of each call. */
interface Seen {
  method: string;
  authorization: string[];
  deadline: number;
  startAfter?: string;
  liveOnly?: boolean;
}

const seen: Seen[] = [];
let server: Server;
let target: string;

/** A grpc-js error whose trailer carries a google.rpc.Status, as the Python server sends them. */
function richError(code: status, message: string, ...details: rpc.Any[]): ServerErrorResponse {
  const metadata = new Metadata();
  const encoded = rpc.Status.encode(rpc.Status.fromPartial({ code, message, details })).finish();
  metadata.set("grpc-status-details-bin", Buffer.from(encoded));
  return Object.assign(new Error(message), { code, details: message, metadata });
}

function pack(typeName: string, value: Uint8Array): rpc.Any {
  return { typeUrl: `type.googleapis.com/${typeName}`, value: Buffer.from(value) };
}

function record(
  method: string,
  call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>,
): void {
  const deadline = call.getDeadline();
  seen.push({
    method,
    authorization: call.metadata.get("authorization").map(String),
    deadline: deadline instanceof Date ? deadline.getTime() : Number(deadline),
  });
}

let subscribeCalls = 0;
let thirdCallCancelled = false;
let closeTestCancelled = false;

const payments = {
  getPayment(
    call: ServerUnaryCall<GetPaymentRequest, GetPaymentResponse>,
    callback: sendUnaryData<GetPaymentResponse>,
  ) {
    record("getPayment", call);
    if (call.request.name === "payments/missing") {
      // No ErrorInfo at all: the reason falls back to the code's name.
      callback({ code: status.NOT_FOUND, details: "no such payment" });
      return;
    }
    callback(
      richError(
        status.RESOURCE_EXHAUSTED,
        "the settlement queue is full",
        pack(
          "google.rpc.ErrorInfo",
          rpc.ErrorInfo.encode({
            reason: "QUEUE_FULL",
            domain: "agentflow.payments",
            metadata: { depth: "10000" },
          }).finish(),
        ),
        pack(
          "google.rpc.RetryInfo",
          rpc.RetryInfo.encode({ retryDelay: { seconds: "1", nanos: 500_000_000 } }).finish(),
        ),
        pack(
          "google.rpc.BadRequest",
          rpc.BadRequest.encode(
            rpc.BadRequest.fromPartial({ fieldViolations: [{ field: "amount", description: "not a number" }] }),
          ).finish(),
        ),
      ),
    );
  },
  watchPayment(call: ServerWritableStream<WatchPaymentRequest, WatchPaymentResponse>) {
    record("watchPayment", call);
    const base = { name: call.request.name, amount: "1", updateTime: new Date(1_700_000_000_000) };
    // The same state twice (as after a reconnection), then the final one.
    call.write({ payment: Payment.fromPartial({ ...base, status: PaymentStatus.PAYMENT_STATUS_QUEUED }) });
    call.write({ payment: Payment.fromPartial({ ...base, status: PaymentStatus.PAYMENT_STATUS_QUEUED }) });
    call.write({ payment: Payment.fromPartial({ ...base, status: PaymentStatus.PAYMENT_STATUS_COMPLETED }) });
    call.end();
  },
};

const events = {
  subscribeEvents(call: ServerWritableStream<SubscribeEventsRequest, SubscribeEventsResponse>) {
    record("subscribeEvents", call);
    seen.at(-1)!.startAfter = call.request.startAfter;
    seen.at(-1)!.liveOnly = call.request.liveOnly;
    const event = (sequence: number) => ({
      event: Event.fromPartial({
        sequence: String(sequence),
        type: "payment.queued",
        resource: `payments/${sequence}`,
      }),
    });
    if (call.request.filter?.taskId === "close-test") {
      call.write(event(1));
      call.on("cancelled", () => {
        closeTestCancelled = true;
      });
      return;
    }
    subscribeCalls += 1;
    if (subscribeCalls === 1) {
      call.write(event(1));
      call.write(event(2));
      // The server restarts.
      call.emit("error", { code: status.UNAVAILABLE, details: "shutting down" });
    } else if (subscribeCalls === 2) {
      call.write(event(2)); // already yielded: skipped
      call.write(event(4));
      call.write({ heartbeat: { time: new Date(), headSequence: "9" } });
      // Too slow: resume after the cursor.
      call.emit(
        "error",
        richError(
          status.RESOURCE_EXHAUSTED,
          "too slow",
          pack(
            "google.rpc.ErrorInfo",
            rpc.ErrorInfo.encode({
              reason: "SUBSCRIBER_TOO_SLOW",
              domain: "agentflow.payments",
              metadata: {},
            }).finish(),
          ),
        ),
      );
    } else if (subscribeCalls === 3) {
      call.write(event(10));
      // Left open: the client cancels it when the caller stops iterating.
      call.on("cancelled", () => {
        thirdCallCancelled = true;
      });
    } else {
      call.emit("error", { code: status.PERMISSION_DENIED, details: "no" });
    }
  },
};

before(async () => {
  server = new Server();
  server.addService(PaymentServiceService, payments as unknown as UntypedServiceImplementation);
  server.addService(EventServiceService, events as unknown as UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
      error ? reject(error) : resolve(bound),
    ),
  );
  target = `127.0.0.1:${port}`;
});

after(() => {
  server.forceShutdown();
});

test("a unary helper sends the key and the default deadline, and decodes ErrorInfo, BadRequest and RetryInfo", async () => {
  const client = new AgentflowClient(target, { apiKey: "afk_test", timeoutMs: 7_000 });
  try {
    seen.length = 0;
    const before = Date.now();
    const error = await client.getPayment("payments/full").then(
      () => assert.fail("getPayment should fail"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof AgentflowError, String(error));
    assert.equal(error.code, status.RESOURCE_EXHAUSTED);
    assert.equal(error.codeName, "RESOURCE_EXHAUSTED");
    assert.equal(error.reason, Reason.QUEUE_FULL);
    assert.equal(error.details, "the settlement queue is full");
    assert.equal(error.message, "RESOURCE_EXHAUSTED QUEUE_FULL: the settlement queue is full");
    assert.deepEqual(error.metadata, { depth: "10000" });
    assert.deepEqual(error.fieldViolations, [{ field: "amount", description: "not a number" }]);
    assert.equal(error.retryDelayMs, 1_500);
    assert.equal((error.cause as { code?: number }).code, status.RESOURCE_EXHAUSTED);

    assert.deepEqual(seen[0]!.authorization, ["Bearer afk_test"]);
    // The client's timeoutMs became the call's deadline.
    assert.ok(
      seen[0]!.deadline >= before + 6_000 && seen[0]!.deadline <= Date.now() + 7_000,
      String(seen[0]!.deadline),
    );
  } finally {
    client.close();
  }
});

test("an error without details takes the code's name as its reason; a per-call timeout wins", async () => {
  const client = new AgentflowClient(target, { apiKey: "afk_test" });
  try {
    seen.length = 0;
    const error = await client.getPayment("payments/missing", { timeoutMs: 2_000 }).catch((e: unknown) => e);
    assert.ok(error instanceof AgentflowError);
    assert.equal(error.code, status.NOT_FOUND);
    assert.equal(error.reason, "NOT_FOUND");
    assert.deepEqual(error.fieldViolations, []);
    assert.equal(error.retryDelayMs, undefined);
    assert.ok(seen[0]!.deadline <= Date.now() + 2_000);
  } finally {
    client.close();
  }
});

test("the raw generated clients carry the key too, and their errors convert with fromServiceError", async () => {
  const client = new AgentflowClient(target, { apiKey: "afk_raw" });
  try {
    seen.length = 0;
    const error = await new Promise<unknown>((resolve) =>
      client.payments.getPayment({ name: "payments/full" }, (e) => resolve(e)),
    );
    assert.deepEqual(seen[0]!.authorization, ["Bearer afk_raw"]);
    const converted = AgentflowError.fromServiceError(error as never);
    assert.equal(converted.reason, Reason.QUEUE_FULL);
  } finally {
    client.close();
  }
});

test("watchPayment yields each distinct state until the final one, with no deadline on the stream", async () => {
  const client = new AgentflowClient(target, { apiKey: "afk_test" });
  try {
    seen.length = 0;
    const statuses: PaymentStatus[] = [];
    for await (const payment of client.watchPayment("payments/p1")) {
      statuses.push(payment.status);
    }
    assert.deepEqual(statuses, [PaymentStatus.PAYMENT_STATUS_QUEUED, PaymentStatus.PAYMENT_STATUS_COMPLETED]);
    assert.deepEqual(seen[0]!.authorization, ["Bearer afk_test"]);
    assert.equal(seen[0]!.deadline, Infinity);
  } finally {
    client.close();
  }
});

test("subscribeEvents resumes after the last event or heartbeat when the stream breaks, and stops when told", async () => {
  const client = new AgentflowClient(target, { apiKey: "afk_test" });
  try {
    seen.length = 0;
    const sequences: string[] = [];
    for await (const event of client.subscribeEvents({ types: ["payment.*"] }, { maxBackoffMs: 50 })) {
      sequences.push(event.sequence);
      if (sequences.length === 4) {
        break;
      }
    }
    assert.deepEqual(sequences, ["1", "2", "4", "10"]);
    // Leaving the loop cancelled the open stream rather than leaving it running.
    for (let waited = 0; !thirdCallCancelled && waited < 2_000; waited += 20) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.ok(thirdCallCancelled, "the stream was not cancelled");
    assert.deepEqual(
      seen.map((call) => [call.startAfter, call.liveOnly]),
      [
        ["0", false],
        ["2", false],
        ["9", false],
      ],
    );
    // A refusal is not retried: it is thrown.
    await assert.rejects(
      async () => {
        for await (const _ of client.subscribeEvents()) {
          // nothing arrives
        }
      },
      (error: unknown) => error instanceof AgentflowError && error.code === status.PERMISSION_DENIED,
    );
  } finally {
    client.close();
  }
});

test("close() cancels an open subscribeEvents stream and ends its loop without an error", async () => {
  const client = new AgentflowClient(target, { apiKey: "afk_test" });
  const sequences: string[] = [];
  for await (const event of client.subscribeEvents({ taskId: "close-test" }, { maxBackoffMs: 50 })) {
    sequences.push(event.sequence);
    client.close();
  }
  assert.deepEqual(sequences, ["1"]);
  for (let waited = 0; !closeTestCancelled && waited < 2_000; waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.ok(closeTestCancelled, "the stream was left open on the server");
});
