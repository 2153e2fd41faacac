"""The README's walk-through, run as printed against a fresh ``agentflow dev``: every command works, and
prints what the README shows up to what differs between runs (ids, hashes, keys, times, column widths)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .test_cli import DevServer, _env, _run, dev_server

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Five-minute walk-through"

__all__ = ["dev_server"]  # the fixture, imported to be used here

# What differs between two runs of the same commands, each with a stand-in.
_VARYING = [
    (re.compile(r"\b(payments|escrows|batches|webhooks|deliveries|apiKeys|withdrawals)/[0-9A-Za-z_-]+"), r"\1/ID"),
    (re.compile(r"0x[0-9a-fA-F]{64}"), "HASH"),
    (re.compile(r"0x[0-9a-f]{6,}…|0x[0-9a-f]{16}\.\.\."), "HASH"),
    (re.compile(r"\bafk_[\w-]+"), "KEY"),
    (re.compile(r"\bwhsec_[\w+/=]+"), "SECRET"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?"), "TIME"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "TIME"),
    (re.compile(r"\b\d+(\.\d+)? ?(ms|s)\b"), "DURATION"),
    (re.compile(r"\bmsg_\w+"), "msg_ID"),
    (re.compile(r"(\bblock|\bsequence|#|^msg_ID)\s*\d+"), r"\1 N"),
    (re.compile(r"summarise-report-\w+|127\.0\.0\.1:\d+"), "VARIES"),
]


def commands(readme: str) -> list[tuple[str, list[str]]]:
    """The walk-through's commands (``$ `` lines, with their ``\\`` continuations) and the output shown after
    each, in order."""
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.DOTALL):
        lines = block.splitlines()
        index = 0
        while index < len(lines):
            line = lines[index]
            assert line.startswith("$ "), f"output before a command: {line!r}"
            command = line[2:]
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + "\n" + lines[index]
            index += 1
            output = []
            while index < len(lines) and not lines[index].startswith("$ "):
                output.append(lines[index])
                index += 1
            steps.append((command, output))
    return steps


def normalize(lines: list[str]) -> list[str]:
    result = []
    for line in lines:
        for pattern, stand_in in _VARYING:
            line = pattern.sub(stand_in, line)
        # Table columns are as wide as their widest cell, which varies with the ids in them.
        line = re.sub(r"─+", "─", line)
        line = re.sub(r"\s+", " ", line).strip()
        if line:
            result.append(line)
    return result


def test_the_commands_are_found() -> None:
    steps = commands((ROOT / "README.md").read_text())
    assert len(steps) >= 10
    assert all(command.strip() for command, _ in steps)


async def test_the_walk_through_runs_as_printed(dev_server: DevServer, tmp_path: Path) -> None:
    steps = commands((ROOT / "README.md").read_text())
    results = await run_walk_through(steps, dev_server, tmp_path)
    for (command, shown), (code, printed) in zip(steps, results, strict=True):
        assert code == 0, f"$ {command}\nexit {code}\n{printed}"
        lines, expected = normalize(printed.splitlines()), normalize(shown)
        if command.startswith("agentflow payments watch"):
            # A new process, it may start after the payment has moved on (the embedded chain settles within a
            # second, and a slow machine takes about as long to start the command): its first state is then
            # a later one, and the rest follow as shown.
            assert lines, f"$ {command}\nprinted nothing"
            expected = expected[len(expected) - len(lines) :]
        assert lines == expected, f"$ {command}\nprinted:\n{printed}"


async def run_walk_through(
    steps: list[tuple[str, list[str]]], server: DevServer, tmp_path: Path
) -> list[tuple[int, str]]:
    """Run the commands in one shell, as the reader does in the second terminal: the banner's export lines
    pasted, the venv's commands on the PATH, in a directory like the repository's root (files the walk-through
    writes land in ``tmp_path``). Each command's exit code and output (stdout and stderr), in order."""
    # The export lines the banner prints for pasting, pasted.
    pasted = "".join(line.strip() + "\n" for line in server.banner.splitlines() if line.startswith("  export "))
    assert "AGENTFLOW_TARGET=" in pasted, server.banner
    env = _env(tmp_path, PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("AGENTFLOW_DATA_DIR")
    work = tmp_path / "checkout"
    work.mkdir()
    for name in (".venv", "scripts", "examples", "client"):
        (work / name).symlink_to(ROOT / name)
    marker = "@@walkthrough@@"
    script = (
        "set -u\n"
        + pasted
        + "".join(
            # Braces, not a subshell: a variable a command sets is there for the next, as in the reader's shell.
            f"echo '{marker} {index}'\n{{ {command}\n}} 2>&1\necho \"{marker} rc $?\"\n"
            for index, (command, _) in enumerate(steps)
        )
    )
    code, text, err = await _run("bash", "-c", script, env=env, cwd=work, limit=120)
    assert code == 0, text + err
    results = []
    for printed in re.split(rf"^{marker} \d+\n", text, flags=re.MULTILINE)[1:]:
        body, code = printed.rsplit(f"{marker} rc ", 1)
        results.append((int(code), body))
    assert len(results) == len(steps), text
    return results


def test_the_exit_code_table_lists_every_exit_code() -> None:
    from agentflow_server.cli.errors import ExitCode

    readme = (ROOT / "README.md").read_text()
    table = readme.split("| exit | meaning |", 1)[1].split("\n\n", 1)[0]
    listed = [int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)]
    assert listed == sorted(code.value for code in ExitCode)
