/**
 * An agent pays another for a task through escrow, with the TypeScript SDK (the same story as
 * examples/python/escrow_task.py).
 *
 * The payer puts the price in escrow (released on the payer's approval); the worker sees it on its
 * event stream, does the work, and the payer releases the escrow once satisfied. The release is a
 * payment settled on chain to the worker's wallet, followed here until COMPLETED; then both balances
 * at the settlement contract are printed.
 *
 * Against `./scripts/dev`, with two dev agents from its banner:
 *
 *   cd client/typescript && npm run build && npm run build:test    # compiles it to build/examples
 *   AGENTFLOW_TARGET=127.0.0.1:50051 \
 *   PAYER=0x3017... PAYER_KEY=afk_... WORKER=0xF173... WORKER_KEY=afk_... \
 *     npm run example:escrow
 *
 * Every setting is also an argument: --target, --payer, --payer-key, --worker, --worker-key, and
 * --amount (the price in base units; default 5000000, 5 USDC).
 */

import { createHash, randomBytes } from "node:crypto";
import { parseArgs } from "node:util";

import {
  AgentflowClient,
  AgentflowError,
  type Balance,
  EscrowStatus,
  PaymentStatus,
  paymentStatusToJSON,
  ReleaseCondition,
} from "@agentflow/payments";

const TOKEN = "USDC";

/** A missing setting: reported in one line, without a stack. */
class UsageError extends Error {}

const { values: args } = parseArgs({
  options: {
    target: { type: "string" },
    payer: { type: "string" },
    "payer-key": { type: "string" },
    worker: { type: "string" },
    "worker-key": { type: "string" },
    amount: { type: "string" },
  },
});

function setting(value: string | undefined, variable: string, fallback?: string): string {
  const found = value ?? process.env[variable] ?? fallback;
  if (found === undefined || found === "") {
    throw new UsageError(`set ${variable} (or pass its --argument)`);
  }
  return found;
}

/**
 * The worker: wait for an escrow that pays this worker for the task, check it, do the work, and
 * return the result's hash.
 */
async function worker(client: AgentflowClient, address: string, taskId: string): Promise<string> {
  // Events from the log's start for this task and address: the escrow.created event is not missed
  // even if the payer creates the escrow before this stream is open.
  for await (const event of client.subscribeEvents({ types: ["escrow.created"], address, taskId })) {
    const escrow = event.escrow;
    if (escrow === undefined || escrow.payee !== address || escrow.status !== EscrowStatus.ESCROW_STATUS_ACTIVE) {
      continue;
    }
    console.log(`worker: ${event.type} ${event.resource}, ${escrow.heldAmount} ${escrow.token} held for me`);
    const result = `summary of report ${taskId}: revenue up 12%`;
    const digest = createHash("sha256").update(result).digest("hex");
    console.log(`worker: done, result sha256 ${digest.slice(0, 16)}...`);
    return digest;
  }
  throw new Error("the event stream ended");
}

function describe(who: string, balance: Balance | undefined): string {
  const label = `${who}:`.padEnd(8);
  return balance === undefined
    ? `${label}no ${TOKEN} balance`
    : `${label}${balance.token} available ${balance.available}, escrowed ${balance.escrowed}, total ${balance.total}`;
}

async function main(): Promise<number> {
  const target = setting(args.target, "AGENTFLOW_TARGET", "127.0.0.1:50051");
  const payerAddress = setting(args.payer, "PAYER");
  const workerAddress = setting(args.worker, "WORKER");
  const price = setting(args.amount, "AMOUNT", "5000000");
  const taskId = `summarise-report-${randomBytes(4).toString("hex")}`;

  // Each agent holds its own key: a payer key may only act for the address it is bound to.
  const payer = new AgentflowClient(target, { apiKey: setting(args["payer-key"], "PAYER_KEY") });
  const workerClient = new AgentflowClient(target, { apiKey: setting(args["worker-key"], "WORKER_KEY") });
  try {
    const work = worker(workerClient, workerAddress, taskId);
    // Should the payer fail first, the worker's stream ends when its client closes below; its error is
    // then nobody's business (it is reported where it is awaited otherwise).
    work.catch(() => undefined);
    // The price and its fee move from the payer's available balance to escrowed.
    const escrow = await payer.createEscrow({
      taskId,
      payer: payerAddress,
      payee: workerAddress,
      token: TOKEN,
      amount: price,
      releaseCondition: ReleaseCondition.RELEASE_CONDITION_PAYER_APPROVAL,
      // Refunded to the payer if never released.
      expireTime: new Date(Date.now() + 60 * 60 * 1000),
      // A retried CreateEscrow with the same request_id gets this escrow back, not a second one.
      requestId: `hire-${taskId}`,
    });
    console.log(`payer:  ${escrow.name} holds ${escrow.heldAmount} ${TOKEN} for ${taskId} (fee ${escrow.fee?.total})`);

    await work; // a real payer would check the result here
    const released = await payer.releaseEscrow({ name: escrow.name, requestId: `release-${taskId}` });
    console.log(`payer:  released, ${released.payment.name}`);

    // The release is a payment like any other: queued, then settled on chain in the next batch.
    let payment = released.payment;
    for await (const state of payer.watchPayment(payment.name)) {
      console.log(`payment ${paymentStatusToJSON(state.status).replace("PAYMENT_STATUS_", "")}`);
      payment = state;
    }
    if (payment.status !== PaymentStatus.PAYMENT_STATUS_COMPLETED) {
      console.error(`payment ${payment.name} ended ${paymentStatusToJSON(payment.status)}: ${payment.failureReason}`);
      return 1;
    }
    const settlement = payment.settlement;
    console.log(`settled in block ${settlement?.blockNumber}, tx ${settlement?.transactionHash.slice(0, 18)}...`);

    // Balances at the settlement contract: the payer's shows the price and fee gone; the worker was paid
    // to its own wallet on chain, so its balance here is as it was.
    const [payerBalance] = await payer.getBalances(payerAddress, [TOKEN]);
    const [workerBalance] = await workerClient.getBalances(workerAddress, [TOKEN]);
    console.log(describe("payer", payerBalance));
    console.log(describe("worker", workerBalance));
    return 0;
  } finally {
    payer.close();
    workerClient.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof AgentflowError) {
      // Its message names the code and reason: "FAILED_PRECONDITION INSUFFICIENT_BALANCE: ...".
      console.error(`refused: ${error.message}`);
    } else if (error instanceof UsageError) {
      console.error(`escrow_task: ${error.message}`);
    } else {
      console.error(error);
    }
    process.exitCode = 1;
  },
);
