/**
 * The Python dev server, started as a user starts it (`agentflow dev`), and what its banner says.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";

/** The repository root (this file runs from client/typescript/build/test). */
export const ROOT = path.resolve(__dirname, "../../../..");
/** The virtualenv ./scripts/bootstrap creates, with the server's `agentflow` command in it. */
export const VENV_BIN = path.join(ROOT, ".venv", "bin");

/** A dev agent of the banner: funded on the embedded chain, with a payer key bound to its address. */
export interface DevAgent {
  name: string;
  address: string;
  payerKey: string;
}

/** A running `agentflow dev`. */
export interface DevServer {
  target: string;
  adminKey: string;
  agents: DevAgent[];
  banner: string;
  process: ChildProcess;
  /** What the server logged to stderr so far (for failure messages). */
  log(): string;
  /** SIGTERM, then the exit code (the server shuts down cleanly on SIGTERM). */
  stop(): Promise<number | null>;
}

/** Parse the dev banner: the gRPC target, the admin key and the dev agents. */
export function parseBanner(banner: string): { target: string; adminKey: string; agents: DevAgent[] } {
  const target = /^\s*gRPC:\s+(\S+)/m.exec(banner)?.[1];
  const adminKey = /^\s*admin key:\s+(\S+)/m.exec(banner)?.[1];
  if (target === undefined || adminKey === undefined) {
    throw new Error(`no gRPC target or admin key in the dev banner:\n${banner}`);
  }
  // "  alice  0x...\n         private key 0x...\n         payer key   afk_..."
  const agents = [...banner.matchAll(/^ {2}(\w+)\s+(0x[0-9a-fA-F]{40})\n.*\n\s+payer key\s+(\S+)$/gm)].map(
    ([, name, address, payerKey]) => ({ name: name!, address: address!, payerKey: payerKey! }),
  );
  return { target, adminKey, agents };
}

/**
 * Start `agentflow dev --listen 127.0.0.1:0` (a free port; no metrics port, so runs never collide)
 * with a fresh data directory, and wait for its banner.
 */
export async function startDevServer(timeoutMs = 60_000): Promise<DevServer> {
  const dataDir = mkdtempSync(path.join(tmpdir(), "agentflow-ts-test-"));
  // The caller's AGENTFLOW_* settings would change what is tested (a fixed port, a real chain).
  const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith("AGENTFLOW_")));
  Object.assign(env, {
    AGENTFLOW_DATA_DIR: dataDir,
    AGENTFLOW_METRICS_LISTEN: "",
    AGENTFLOW_SHUTDOWN_GRACE: "1",
  });
  const child = spawn(path.join(VENV_BIN, "agentflow"), ["dev", "--listen", "127.0.0.1:0"], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  // Keep draining stderr: a full pipe would block the server's logging, and with it the server.
  let stderr = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));

  const banner = await new Promise<string>((resolve, reject) => {
    let text = "";
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`no dev banner after ${timeoutMs} ms:\n${text}\n${stderr}`));
    }, timeoutMs);
    lines.on("line", (line) => {
      text += `${line}\n`;
      if (line.includes("Ctrl-C stops it.")) {
        clearTimeout(timer);
        resolve(text);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`agentflow dev exited with ${code} before its banner:\n${text}\n${stderr}`));
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });

  const { target, adminKey, agents } = parseBanner(banner);
  return {
    target,
    adminKey,
    agents,
    banner,
    process: child,
    log: () => stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
      }
      const killer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const code = await exited;
      clearTimeout(killer);
      rmSync(dataDir, { recursive: true, force: true });
      return code;
    },
  };
}
