// Compile contracts/src and contracts/dev with solc-js (from npm, offline) for the prague EVM, and write
// one artifact per contract (ABI, bytecode) into the server package, which deploys and calls them.
// --check: compile, compare with the committed artifacts, and fail if any differs.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const outDir = path.join(root, "server", "agentflow_server", "chain", "artifacts");
const check = process.argv.includes("--check");

const EVM_VERSION = "prague";
const settings = {
  evmVersion: EVM_VERSION,
  optimizer: { enabled: true, runs: 10_000 },
  viaIR: true,
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

const sources = {};
for (const dir of ["src", "dev"]) {
  for (const name of fs.readdirSync(path.join(root, "contracts", dir)).sort()) {
    if (name.endsWith(".sol")) {
      const unit = `contracts/${dir}/${name}`;
      sources[unit] = { content: fs.readFileSync(path.join(root, unit), "utf8") };
    }
  }
}

function findImports(importPath) {
  // OpenZeppelin and any other npm package resolve from node_modules; nothing is fetched.
  for (const base of [path.join(root, "node_modules"), root]) {
    const file = path.join(base, importPath);
    if (fs.existsSync(file)) return { contents: fs.readFileSync(file, "utf8") };
  }
  return { error: `not found: ${importPath}` };
}

const output = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources, settings }), { import: findImports }),
);
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
// Warnings about our own sources are shown; OpenZeppelin's (its transient-storage notice) are its own.
for (const e of output.errors ?? []) {
  if (e.severity === "error" || e.sourceLocation?.file?.startsWith("contracts/")) console.error(e.formattedMessage);
}
if (errors.length) process.exit(1);

const artifacts = {};
for (const unit of Object.keys(sources)) {
  for (const [name, contract] of Object.entries(output.contracts[unit])) {
    artifacts[`${name}.json`] =
      JSON.stringify(
        {
          contractName: name,
          sourceName: unit,
          compiler: { solc: solc.version(), evmVersion: EVM_VERSION, optimizerRuns: settings.optimizer.runs, viaIR: true },
          abi: contract.abi,
          bytecode: "0x" + contract.evm.bytecode.object,
          deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
        },
        null,
        2,
      ) + "\n";
  }
}

if (check) {
  const committed = fs.existsSync(outDir) ? fs.readdirSync(outDir).filter((f) => f.endsWith(".json")).sort() : [];
  const stale = Object.keys(artifacts).filter(
    (f) => !fs.existsSync(path.join(outDir, f)) || fs.readFileSync(path.join(outDir, f), "utf8") !== artifacts[f],
  );
  const extra = committed.filter((f) => !(f in artifacts));
  if (stale.length || extra.length) {
    console.error(`contract artifacts are stale (${[...stale, ...extra].join(", ")}): run ./scripts/compile-contracts`);
    process.exit(1);
  }
  console.log(`${Object.keys(artifacts).length} contract artifacts are current`);
} else {
  fs.mkdirSync(outDir, { recursive: true });
  for (const f of fs.readdirSync(outDir)) if (f.endsWith(".json") && !(f in artifacts)) fs.rmSync(path.join(outDir, f));
  for (const [f, text] of Object.entries(artifacts)) fs.writeFileSync(path.join(outDir, f), text);
  console.log(`wrote ${Object.keys(artifacts).length} contract artifacts to ${path.relative(root, outDir)}`);
}
