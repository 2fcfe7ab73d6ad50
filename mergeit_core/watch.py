"""Noticing new, rewritten and deleted source files between sensor ticks.

A file is read once it has settled: its size and mtime are unchanged since the previous tick, or
its mtime is older than ``settle_seconds``. Writers that want a file picked up at once write it
under an ignored name (``*.tmp``, ``*.partial``, a leading dot) and rename it into place. A file
whose stat changed but whose content hash did not (a touch, a copy of the same bytes) is no change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mergeit_core.ingest import discover_source_files

DEFAULT_SETTLE_SECONDS = 10.0


@dataclass(frozen=True)
class FileChange:
    kind: str  # 'added' | 'modified' | 'deleted'
    path: str
    sha256: str | None


@dataclass
class WatchState:
    """Serialisable sensor cursor: what each known file looked like, and files still settling."""

    files: dict[str, dict] = field(default_factory=dict)     # path -> {size, mtime_ns, sha256}
    settling: dict[str, dict] = field(default_factory=dict)  # path -> {size, mtime_ns}

    def to_json(self) -> dict:
        return {"files": self.files, "settling": self.settling}

    @classmethod
    def from_json(cls, data: Mapping | None) -> WatchState:
        data = data or {}
        return cls(dict(data.get("files", {})), dict(data.get("settling", {})))

    @classmethod
    def from_ingested(cls, ingested: Mapping[str, tuple[int, str]]) -> WatchState:
        """A state that knows each file by its ingested size and hash but not its mtime, so the
        first scan hashes every file and reports only those whose bytes differ from the ingest's."""
        return cls({path: {"size": size, "mtime_ns": None, "sha256": sha256} for path, (size, sha256) in ingested.items()})


@dataclass(frozen=True)
class ScanResult:
    changes: list[FileChange]
    settling: list[str]
    state: WatchState


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_sources(
    sources: Sequence[str | Path], previous: WatchState, *, now: float, settle_seconds: float = DEFAULT_SETTLE_SECONDS
) -> ScanResult:
    files: dict[str, dict] = {}
    settling: dict[str, dict] = {}
    changes: list[FileChange] = []
    for path in discover_source_files(sources):
        key = str(path)
        stat = path.stat()
        seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        known = previous.files.get(key)
        if known and all(known[k] == seen[k] for k in seen):
            files[key] = known
            continue
        settled = previous.settling.get(key) == seen or now - stat.st_mtime_ns / 1e9 >= settle_seconds
        if not settled:
            settling[key] = seen
            if known:
                files[key] = known
            continue
        sha256 = file_sha256(path)
        files[key] = {**seen, "sha256": sha256}
        if known is None:
            changes.append(FileChange("added", key, sha256))
        elif known["sha256"] != sha256:
            changes.append(FileChange("modified", key, sha256))
    changes += [FileChange("deleted", key, None) for key in sorted(set(previous.files) - set(files) - set(settling))]
    return ScanResult(changes, sorted(settling), WatchState(files, settling))
