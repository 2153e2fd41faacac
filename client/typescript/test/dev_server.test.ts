/**
 * The SDK against the real server: `agentflow dev` started as a user starts it, its banner parsed,
 * then payments, their stream, refusals with decoded details, and the escrow example, end to end on
 * the embedded chain.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { after, before, test } from "node:test";

import { status } from "@grpc/grpc-js";

import { AgentflowClient, AgentflowError, EscrowStatus, type Event, PaymentStatus, Reason } from "@agentflow/payments";

import { type DevAgent, type DevServer, startDevServer } from "./support";

let server: DevServer;
let alice: DevAgent;
let bob: DevAgent;
let aliceClient: AgentflowClient;

before(async () => {
  server = await startDevServer();
  assert.deepEqual(
    server.agents.map((agent) => agent.name),
    ["alice", "bob", "carol"],
    server.banner,
  );
  [alice, bob] = server.agents as [DevAgent, DevAgent];
  aliceClient = new AgentflowClient(server.target, { apiKey: alice.payerKey });
});

after(async () => {
  aliceClient?.close();
  if (server !== undefined) {
    const code = await server.stop();
    assert.equal(code, 0, `agentflow dev did not exit cleanly on SIGTERM:\n${server.log()}`);
  }
});

/** The error a promise rejects with (failing when it resolves). */
async function refusal(promise: Promise<unknown>): Promise<AgentflowError> {
  const error = await promise.then(
    () => assert.fail("the call should have been refused"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof AgentflowError, `not an AgentflowError: ${String(error)}`);
  return error;
}

test("a payment from alice to bob is QUEUED, then WatchPayment follows it to COMPLETED", async () => {
  const payment = await aliceClient.submitPayment({
    payer: alice.address,
    payee: bob.address,
    token: "USDC",
    amount: "1500000",
    taskId: "ts-sdk-watch",
  });
  assert.match(payment.name, /^payments\//);
  assert.equal(payment.status, PaymentStatus.PAYMENT_STATUS_QUEUED);
  assert.equal(payment.amount, "1500000");
  assert.ok(BigInt(payment.fee!.total) > 0n);

  const statuses: PaymentStatus[] = [];
  let last = payment;
  for await (const state of aliceClient.watchPayment(payment.name)) {
    statuses.push(state.status);
    last = state;
  }
  assert.equal(statuses.at(-1), PaymentStatus.PAYMENT_STATUS_COMPLETED, `statuses: ${statuses}`);
  assert.match(last.settlement!.transactionHash, /^0x[0-9a-f]{64}$/);
  assert.ok(last.updateTime instanceof Date);

  const fetched = await aliceClient.getPayment(payment.name);
  assert.equal(fetched.status, PaymentStatus.PAYMENT_STATUS_COMPLETED);
});

test("SubscribeEvents replays and follows a task's payment events to payment.completed", async () => {
  const taskId = `ts-sdk-events-${Date.now()}`;
  const payment = await aliceClient.submitPayment({
    payer: alice.address,
    payee: bob.address,
    token: "USDC",
    amount: "2000000",
    taskId,
  });
  const seen: Event[] = [];
  for await (const event of aliceClient.subscribeEvents({ taskId, types: ["payment.*"] })) {
    seen.push(event);
    if (event.type === "payment.completed") {
      break;
    }
  }
  assert.ok(seen.every((event) => event.resource === payment.name && event.taskId === taskId));
  assert.equal(seen[0]!.type, "payment.created");
  assert.equal(seen.at(-1)!.payment!.status, PaymentStatus.PAYMENT_STATUS_COMPLETED);
  const sequences = seen.map((event) => BigInt(event.sequence));
  assert.deepEqual(
    sequences,
    [...sequences].sort((a, b) => (a < b ? -1 : 1)),
  );
});

test("more than the balance is FAILED_PRECONDITION with reason INSUFFICIENT_BALANCE", async () => {
  const error = await refusal(
    aliceClient.submitPayment({
      payer: alice.address,
      payee: bob.address,
      token: "USDC",
      amount: "1" + "0".repeat(30),
    }),
  );
  assert.equal(error.code, status.FAILED_PRECONDITION);
  assert.equal(error.reason, Reason.INSUFFICIENT_BALANCE);
  assert.match(error.message, /^FAILED_PRECONDITION INSUFFICIENT_BALANCE: /);
});

test("a malformed amount is INVALID_ARGUMENT with a field violation on amount", async () => {
  const error = await refusal(
    aliceClient.submitPayment({ payer: alice.address, payee: bob.address, token: "USDC", amount: "1.5 USDC" }),
  );
  assert.equal(error.code, status.INVALID_ARGUMENT);
  assert.equal(error.reason, Reason.INVALID_FIELD);
  assert.deepEqual(
    error.fieldViolations.map((violation) => violation.field),
    ["amount"],
  );
  assert.ok(error.fieldViolations[0]!.description.length > 0);
});

test("a key bound to alice may not pay from bob's address; no key at all is API_KEY_MISSING", async () => {
  const denied = await refusal(
    aliceClient.submitPayment({ payer: bob.address, payee: alice.address, token: "USDC", amount: "1" }),
  );
  assert.equal(denied.code, status.PERMISSION_DENIED);
  assert.equal(denied.reason, Reason.ADDRESS_NOT_ALLOWED);

  const anonymous = new AgentflowClient(server.target, { apiKey: "" });
  try {
    const missing = await refusal(anonymous.getBalances(alice.address));
    assert.equal(missing.code, status.UNAUTHENTICATED);
    assert.equal(missing.reason, Reason.API_KEY_MISSING);
  } finally {
    anonymous.close();
  }
});

test("examples/typescript/escrow_task.ts pays bob through escrow, and its output says so", async () => {
  const [before] = await aliceClient.getBalances(alice.address, ["USDC"]);
  const example = path.resolve(__dirname, "../examples/escrow_task.js");
  // The environment the example's docstring shows, the target as an argument.
  const env = {
    ...process.env,
    PAYER: alice.address,
    PAYER_KEY: alice.payerKey,
    WORKER: bob.address,
    WORKER_KEY: bob.payerKey,
  };
  const stdout = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, [example, "--target", server.target], { timeout: 30_000, env }, (error, out, err) =>
      error ? reject(new Error(`${error.message}\nstdout:\n${out}\nstderr:\n${err}`)) : resolve(out),
    ),
  );
  const lines = stdout.trimEnd().split("\n");
  const created = /^payer: {2}(escrows\/\w+) holds 5000000 USDC for summarise-report-[0-9a-f]{8} \(fee (\d+)\)$/.exec(
    lines[0]!,
  );
  assert.ok(created, stdout);
  const [, escrowName, fee] = created;
  assert.equal(lines[1], `worker: escrow.created ${escrowName}, 5000000 USDC held for me`);
  assert.match(lines[2]!, /^worker: done, result sha256 [0-9a-f]{16}\.\.\.$/);
  assert.match(lines[3]!, /^payer: {2}released, payments\/\w+$/);
  assert.equal(lines.at(-4), "payment COMPLETED", stdout);
  assert.match(lines.at(-3)!, /^settled in block \d+, tx 0x[0-9a-f]{16}\.\.\.$/);

  // What it printed is what happened: the price and its fee left alice's balance at the settlement
  // contract (bob is paid to his wallet on chain, so his balance there does not move).
  const spent = 5_000_000n + BigInt(fee!);
  const available = BigInt(before!.available) - spent;
  const total = BigInt(before!.total) - spent;
  assert.equal(lines.at(-2), `payer:  USDC available ${available}, escrowed 0, total ${total}`);
  assert.match(lines.at(-1)!, /^worker: USDC available \d+, escrowed 0, total \d+$/);
  const escrow = await aliceClient.getEscrow(escrowName!);
  assert.equal(escrow.status, EscrowStatus.ESCROW_STATUS_RELEASED);
  assert.equal(escrow.releasedAmount, "5000000");
});
