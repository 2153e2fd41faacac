"""The v1 contract against its last release: ``buf breaking`` fails on any change to proto/ that would break the
clients generated from that release (a renumbered or retyped field, a removed method...).

The releases are listed in proto/RELEASES with their full commit shas, because a clone may come without tags.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASES = ROOT / "proto" / "RELEASES"
BUF = ROOT / "node_modules" / ".bin" / "buf"


def _releases() -> list[tuple[str, str]]:
    """(tag, commit sha) per release, oldest first, as proto/RELEASES lists them."""
    rows = []
    for raw in RELEASES.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            tag, sha = line.split()
            rows.append((tag, sha))
    return rows


def _version(tag: str) -> tuple[int, ...]:
    return tuple(int(part) for part in tag.removeprefix("v").split("."))


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_releases_lists_tags_with_full_shas_oldest_first() -> None:
    releases = _releases()
    assert releases, "proto/RELEASES lists no release"
    for tag, sha in releases:
        assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), tag
        assert re.fullmatch(r"[0-9a-f]{40}", sha), f"{tag}: {sha} is not a full commit sha"
    tags = [tag for tag, _ in releases]
    assert tags == sorted(tags, key=_version), "the latest release must be the last line"
    # Where this clone has the tag, it names the recorded commit: a moved tag or a mistyped sha shows here.
    for tag, sha in releases:
        tagged = _git("rev-parse", "--quiet", "--verify", f"refs/tags/{tag}^{{commit}}")
        if tagged.returncode == 0:
            assert tagged.stdout.strip() == sha, f"tag {tag} is {tagged.stdout.strip()}, proto/RELEASES says {sha}"


def test_protos_do_not_break_the_latest_release() -> None:
    tag, sha = _releases()[-1]
    present = _git("cat-file", "-e", f"{sha}^{{commit}}")
    assert present.returncode == 0, (
        f"{tag}'s commit {sha} is not in this clone (a shallow checkout?); fetch it with "
        f"`git fetch origin {sha}` or `git fetch --unshallow`"
    )
    # buf.yaml at the root makes the repository a workspace whose module is proto/, so both sides are read
    # as workspaces: the working tree, and the repository at the release commit. The rules are buf.yaml's
    # `breaking` section (FILE: no renumbered, retyped, renamed or removed element in any file).
    result = subprocess.run(
        [str(BUF), "breaking", "--error-format", "text", "--against", f".git#ref={sha}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"proto/ breaks the {tag} contract (commit {sha}); make the change additive (new fields, "
        f"methods, messages; reserve what is removed) or release a v2 package:\n{result.stdout}{result.stderr}"
    )
