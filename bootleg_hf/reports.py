"""Writing results: JSON files written atomically (an interrupted write never leaves a half-written file that a
resumed run would take as finished) and Markdown reports beside them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`data` as indented JSON, written atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def write_report(folder: str | os.PathLike, name: str, results: dict[str, Any], markdown: str) -> None:
    """`<folder>/<name>.json` and `<folder>/<name>.md`."""
    write_json(Path(folder) / f"{name}.json", results)
    write_text(Path(folder) / f"{name}.md", markdown)


__all__ = ["write_text", "write_json", "write_report"]
