"""Generate the Python code for proto/ into the client package.

protoc names generated modules after the proto path (``agentflow.payments.v1``),
but ``agentflow`` is an unrelated project on PyPI, so the modules are moved to
``agentflow_payments.v1`` and their imports rewritten. Messages, gRPC stubs and
mypy-protobuf's ``.pyi`` types (sync and ``grpc.aio``) are all generated.

    python scripts/gen_protos.py            # rewrite client/agentflow_payments/v1
    python scripts/gen_protos.py --check    # exit 1 when the committed code is stale
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc_tools

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE_DIR = Path("agentflow/payments/v1")
TARGET = ROOT / "client" / "agentflow_payments" / "v1"
_IMPORT = re.compile(r"^from agentflow\.payments\.v1 import ", re.MULTILINE)
_HEADER = '"""Generated from proto/agentflow/payments/v1 by scripts/gen-protos. Do not edit."""\n'


def generate(out: Path) -> None:
    """Write the generated package into ``out`` (an empty directory)."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PACKAGE_DIR).glob("*.proto"))
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as raw:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            f"--python_out={raw}",
            f"--grpc_python_out={raw}",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out=quiet:{raw}",
            f"--mypy_grpc_out=quiet:{raw}",
            *protos,
        ]
        subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
        for src in sorted((Path(raw) / PROTO_PACKAGE_DIR).iterdir()):
            # common.proto has no service: its empty _grpc modules are noise.
            if src.name.startswith("common_pb2_grpc"):
                continue
            text = _IMPORT.sub("from agentflow_payments.v1 import ", src.read_text())
            (out / src.name).write_text(text)
    modules = sorted(p.stem for p in out.glob("*.py"))
    imports = "".join(f"from agentflow_payments.v1 import {m} as {m}\n" for m in modules)
    (out / "__init__.py").write_text(_HEADER + "\n" + imports)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed code is current")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        if args.check:
            names = sorted(os.listdir(fresh))
            current = sorted(os.listdir(TARGET)) if TARGET.exists() else []
            current = [n for n in current if n != "__pycache__"]
            _, mismatch, errors = filecmp.cmpfiles(fresh, TARGET, names, shallow=False)
            if names != current or mismatch or errors:
                print(f"stale generated code in {TARGET.relative_to(ROOT)}: run ./scripts/gen-protos", file=sys.stderr)
                return 1
            return 0
        if TARGET.exists():
            shutil.rmtree(TARGET)
        shutil.copytree(fresh, TARGET)
    print(f"generated {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
