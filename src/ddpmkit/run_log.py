"""A run's ``log.jsonl``: one JSON record per line, consistent with the checkpoint a run resumes from."""
from __future__ import annotations

import json
from pathlib import Path

from .files import write_text


def read_records(path: str | Path) -> list[dict]:
    """The complete records of a log; a line cut short by a killed process (or otherwise unreadable) is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class RunLog:
    """Appends records, flushed line by line. Opening it for a run that resumes at ``step`` first drops what came
    after that step (work a killed or interrupted run did past its last checkpoint, which the resumed run redoes)
    and any half-written line, so the log never holds a step twice."""

    def __init__(self, path: str | Path, resume_step: int):
        self.path = Path(path)
        kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
