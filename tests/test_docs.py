"""The documents a user reads agree with the code: nothing points outside the repository,
and the protocol document names every error code and close code the server can send."""

from __future__ import annotations

import subprocess
from pathlib import Path

from server import errors

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in listed if not name.endswith((".png", ".svg", ".ico"))]


# The one folder outside the repository that documents have pointed at, spelled so that
# this file does not name it itself.
OUTSIDE = "/".join(("..", "shared"))


def test_nothing_refers_to_a_file_outside_the_repository() -> None:
    outside = [
        str(path.relative_to(ROOT))
        for path in tracked_text_files()
        if path.is_file() and OUTSIDE in path.read_text(errors="replace")
    ]
    assert outside == []


def test_the_protocol_document_names_every_error_code() -> None:
    text = PROTOCOL.read_text()
    codes = {
        kind.code
        for kind in vars(errors).values()
        if isinstance(kind, type) and issubclass(kind, errors.CartError) and kind.code != "error"
    }
    codes.discard("not_due")  # internal: never sent
    missing = sorted(code for code in codes if f"`{code}`" not in text)
    assert missing == []


def test_the_protocol_document_names_every_close_code() -> None:
    text = PROTOCOL.read_text()
    closes = [value for name, value in vars(errors).items() if name.startswith("CLOSE_")]
    assert closes and [code for code in closes if str(code) not in text] == []
