/**
 * The TypeScript reasons are the Python catalogue's (client/agentflow_payments/_reasons.py, the list
 * the server raises from), in the same order and with the same status codes.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import path from "node:path";
import { test } from "node:test";

import { status } from "@grpc/grpc-js";

import { ERROR_DOMAIN, isReason, Reason, REASON_CODES, REASONS } from "@agentflow/payments";

import { ROOT, VENV_BIN } from "./support";

// The Python side reads its own enum, so neither list is parsed from source text.
const PYTHON = `
import json
from agentflow_payments import ERROR_DOMAIN, Reason
print(json.dumps({"domain": ERROR_DOMAIN, "reasons": [[r.value, r.code.name] for r in Reason]}))
`;

test("Reason, REASONS and REASON_CODES match the Python catalogue", () => {
  const python = JSON.parse(
    execFileSync(path.join(VENV_BIN, "python"), ["-c", PYTHON], { cwd: ROOT, encoding: "utf8" }),
  ) as { domain: string; reasons: Array<[string, string]> };
  assert.ok(python.reasons.length >= 5);
  assert.equal(ERROR_DOMAIN, python.domain);
  assert.deepEqual(
    REASONS.map((reason) => [reason, status[REASON_CODES[reason]]]),
    python.reasons,
  );
  assert.deepEqual(Object.keys(Reason), [...REASONS]);
  for (const [name, value] of Object.entries(Reason)) {
    assert.equal(name, value);
  }
});

test("isReason tells known reasons from others", () => {
  assert.equal(isReason("INSUFFICIENT_BALANCE"), true);
  assert.equal(isReason("SOMETHING_NEWER"), false);
});
