"""The TypeScript SDK in client/typescript: its own test suite (node --test, against ``agentflow dev``) and
the freshness of its generated code, so that ./scripts/test covers it like the Python SDK."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TS = ROOT / "client" / "typescript"


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; on timeout kill its whole process group (npm, node and the dev server it
    started), so that nothing outlives the test."""
    process = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"{' '.join(args)} took more than {timeout} s:\n{out}")
    return subprocess.CompletedProcess(args, process.returncode, out, None)


@pytest.fixture(scope="module")
def npm() -> str:
    found = shutil.which("npm")
    assert found is not None, "npm is not on PATH (Node.js 20+ with npm is required; see README)"
    installed = (TS / "node_modules" / ".bin" / "tsc").exists()
    assert installed, "client/typescript/node_modules is missing: run ./scripts/bootstrap"
    return found


def test_typescript_sdk_test_suite_passes(npm: str) -> None:
    # Builds the SDK, its tests and examples/typescript, then runs them: unit tests against a scripted
    # grpc-js server, and payments, refusals and the escrow example against a real `agentflow dev`.
    result = _run([npm, "test"], TS, timeout=180)
    assert result.returncode == 0, result.stdout
    # The whole suite ran: had the build/test/*.test.js glob matched fewer files, npm would still exit 0.
    passed = re.search(r"\bpass (\d+)$", result.stdout, re.MULTILINE)
    assert passed is not None, result.stdout
    assert int(passed.group(1)) >= 10, result.stdout
    assert re.search(r"\bfail 0$", result.stdout, re.MULTILINE), result.stdout


def test_typescript_generated_code_is_fresh() -> None:
    result = _run([str(ROOT / "scripts" / "gen-ts-protos"), "--check"], ROOT, timeout=120)
    assert result.returncode == 0, result.stdout
