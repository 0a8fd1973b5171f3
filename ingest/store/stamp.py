"""kb's write stamp of the embedded index: how the query snapshot knows it still matches Chroma.

``KB_INDEX_DIR/chroma/kb-stamp.json`` holds ``{"lineage": <random>, "generation": <n>}``. The Chroma
adapter bumps the generation *before* every write it makes (upsert, delete, switching or dropping the
active collection), so once a write may have reached Chroma the stamp differs from the one the
snapshot was exported under, even if the process is killed right after. The lineage is drawn when the
file is first written, so a recreated index never repeats a stamp an old snapshot carries. The file
lives inside Chroma's folder so that removing that folder also removes the stamp.

Reading the stamp is one small file read (no chromadb, no SQLite). Writes made to Chroma by anything
other than kb are not seen; kb owns its index.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

STAMP_FILE = "kb-stamp.json"


def stamp_path(index_dir: Path) -> Path:
    return Path(index_dir) / "chroma" / STAMP_FILE


def read_stamp(index_dir: Path) -> dict[str, Any] | None:
    """The current stamp, or ``None`` when the index has none (no local index, or one kb has not written yet)."""
    try:
        stamp = json.loads(stamp_path(index_dir).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or not isinstance(stamp.get("generation"), int) or not stamp.get("lineage"):
        return None
    return {"lineage": str(stamp["lineage"]), "generation": stamp["generation"]}


def bump(index_dir: Path) -> dict[str, Any]:
    """Advance the generation (called before a write); durable before it returns."""
    path = stamp_path(index_dir)
    current = read_stamp(index_dir) or {"lineage": uuid.uuid4().hex, "generation": 0}
    stamp = {"lineage": current["lineage"], "generation": current["generation"] + 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{STAMP_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(stamp))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return stamp
