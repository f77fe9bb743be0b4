"""Task datasets: JSONL (optionally gzip) files of dict rows, loaded by path.

``package:NAME`` names a file shipped inside ``agentrl/data``; any other string is a path.
"""
from __future__ import annotations

import gzip
import io
import json
from importlib import resources
from pathlib import Path
from typing import Iterator


def resolve_path(path: str | Path) -> Path:
    text = str(path)
    if text.startswith("package:"):
        return Path(str(resources.files("agentrl.data").joinpath(text.removeprefix("package:"))))
    return Path(text).expanduser()


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    p = resolve_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"dataset file not found: {p}")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{lineno}: not valid JSON ({e.msg})") from None


def load_jsonl(path: str | Path, limit: int | None = None, require: tuple[str, ...] = ()) -> list[dict]:
    rows = []
    for row in iter_jsonl(path):
        missing = [k for k in require if k not in row]
        if missing:
            raise ValueError(f"{resolve_path(path)}: row {len(rows) + 1} lacks field(s) {missing}")
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def write_jsonl(path: str | Path, rows) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".gz":  # mtime 0: the same rows give the same bytes (generated data files diff cleanly)
        f = io.TextIOWrapper(gzip.GzipFile(p, "wb", mtime=0), encoding="utf-8")
    else:
        f = open(p, "w", encoding="utf-8")
    with f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
