"""Reading instruction data: find source files, parse Alpaca (JSON, JSONL, Parquet, CSV, TSV)
and ShareGPT records, validate, normalise and deduplicate them.

Problems with the data never raise: each bad record, turn or file becomes a ``RejectedRow``, each
repeat a ``DuplicateRow`` and each file in a source folder that is not read a ``SkippedFile``, so
every row and file is accounted for. Only configuration errors (a configured path that does not
exist, an unsupported file named explicitly) raise ``SourceError``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from mergeit_core.records import Sample

try:  # orjson is optional: same results as json, several times faster on large files
    from orjson import loads as _json_loads
except ImportError:
    from json import loads as _json_loads

SUPPORTED_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".tsv")
# Writers write-then-rename; files still being written carry one of these endings.
IGNORED_NAME_ENDINGS = (".tmp", ".partial", ".part", ".crdownload")
# SkippedFile.status: 'skipped' files are there but cannot be sources; 'ignored' names are
# deliberately not read (hidden, or still being written) and are only counted.
SKIPPED = "skipped"
IGNORED = "ignored"

_CONVERSATION_KEYS = ("conversations", "messages")
_PARQUET_COLUMNS = frozenset({"instruction", "input", "output", *_CONVERSATION_KEYS})
_PARQUET_BATCH_ROWS = 8192
_HUMAN_ROLES = frozenset({"human", "user"})
_ASSISTANT_ROLES = frozenset({"gpt", "assistant"})
_SYSTEM_ROLES = frozenset({"system"})
# ShareGPT messages are {"from", "value"}; OpenAI messages are {"role", "content"}.
_TEXT_KEY_FOR_ROLE_KEY = {"from": "value", "role": "content"}
_UTF8_BOM = b"\xef\xbb\xbf"
_MISSING = object()
_CSV_COLUMNS = ("instruction", "input", "output")
_CSV_REQUIRED_COLUMNS = ("instruction", "output")  # input is optional, as in Alpaca JSON
# The csv module refuses fields over 128 KiB by default; long answers are ordinary data here.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


class SourceError(ValueError):
    """The configured sources are wrong (as opposed to the data in them)."""


# Where a sample occurs: (source_file, source_row, source_turn).
Location = tuple[str, int, int | None]


@dataclass(frozen=True, slots=True)
class SourceRow:
    sample: Sample
    source_file: str
    source_row: int
    source_turn: int | None

    @property
    def source_id(self) -> str:
        return self.sample.source_id

    @property
    def location(self) -> Location:
        return (self.source_file, self.source_row, self.source_turn)


@dataclass(frozen=True, slots=True)
class RejectedRow:
    source_file: str
    source_row: int | None  # None when the whole file could not be read
    source_turn: int | None
    field: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    source_file: str
    source_row: int
    source_turn: int | None
    source_id: str  # the id of the accepted first occurrence


@dataclass(frozen=True, slots=True)
class FileSummary:
    source_file: str
    file_format: str
    size_bytes: int
    content_hash: str  # sha256 hex of the file's bytes
    rows_read: int  # always accepted + rejected + duplicate
    accepted: int
    rejected: int
    duplicate: int


@dataclass(frozen=True, slots=True)
class SkippedFile:
    """A path in a source folder that is not read, and why."""

    source_file: str
    status: str  # SKIPPED or IGNORED
    reason: str


@dataclass(frozen=True)
class SourceScan:
    files: list[Path]  # the files to read
    skipped: list[SkippedFile]  # everything else met in the source folders


@dataclass
class IngestResult:
    accepted: list[SourceRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    duplicates: list[DuplicateRow] = field(default_factory=list)
    files: list[FileSummary] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


_ParsedRow = SourceRow | RejectedRow
_Reader = Callable[[BinaryIO, str], list[_ParsedRow]]


# --- discovery -------------------------------------------------------------------------------


def discover_source_files(sources: Sequence[str | Path]) -> list[Path]:
    """The supported files under ``sources`` (see ``scan_source_paths``)."""
    return scan_source_paths(sources).files


def scan_source_paths(sources: Sequence[str | Path]) -> SourceScan:
    """The supported files under ``sources`` (files or folders), resolved, de-duplicated and
    sorted by path string, and every other path met in the folders with why it is not read.
    Folders are walked recursively without following symlinked folders; hidden and partially
    written names are ignored (a hidden folder counts once, unread). An explicitly named file is
    taken as is."""
    if isinstance(sources, (str, Path)):
        raise TypeError("sources must be a sequence of paths, not a single path")
    found: dict[str, Path] = {}
    skipped: dict[str, SkippedFile] = {}
    for source in sources:
        path = Path(source).expanduser()
        if not path.exists():
            raise SourceError(f"source path does not exist: {source}")
        if path.is_dir():
            candidates: Iterable[Path | SkippedFile] = _walk_folder(path)
        elif path.suffix.lower() in SUPPORTED_SUFFIXES:
            candidates = [path]
        else:
            raise SourceError(f"source file {source} is not one of {', '.join(SUPPORTED_SUFFIXES)}")
        for candidate in candidates:
            if isinstance(candidate, SkippedFile):
                skipped[candidate.source_file] = candidate
            else:
                resolved = candidate.resolve()
                found[str(resolved)] = resolved
    # Sorting by the string keeps Python's order equal to ORDER BY source_file in DuckDB.
    return SourceScan(
        files=[found[key] for key in sorted(found)],
        skipped=[skipped[key] for key in sorted(skipped) if key not in found],
    )


def _walk_folder(folder: Path) -> Iterator[Path | SkippedFile]:
    def fail(error: OSError) -> None:
        raise SourceError(f"cannot list source folder {error.filename}: {error}") from error

    for directory, subdirectories, filenames in os.walk(folder, onerror=fail):
        walked = []
        for name in subdirectories:
            path = Path(directory, name)
            if _is_ignored_name(name):
                yield _skipped(path, IGNORED, f"{_ignored_name_reason(name)} folder, its contents are not read")
            elif path.is_symlink():
                yield _skipped(path, SKIPPED, "symbolic link to a folder, not followed")
            else:
                walked.append(name)
        subdirectories[:] = walked
        for name in filenames:
            path = Path(directory, name)
            suffix = path.suffix.lower()
            if _is_ignored_name(name):
                yield _skipped(path, IGNORED, f"{_ignored_name_reason(name)} file")
            elif suffix not in SUPPORTED_SUFFIXES:
                kind = f"file type '{suffix}'" if suffix else "a file without an extension"
                yield _skipped(path, SKIPPED, f"{kind} is not a source format ({', '.join(SUPPORTED_SUFFIXES)})")
            elif not path.is_file():
                yield _skipped(path, SKIPPED, "not a regular file (a broken link, pipe or socket)")
            else:
                yield path


def _skipped(path: Path, status: str, reason: str) -> SkippedFile:
    # Not resolved: a broken link has nothing to resolve to, and the name met is what users look for.
    return SkippedFile(str(path.absolute()), status, reason)


def _is_ignored_name(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(IGNORED_NAME_ENDINGS)


def _ignored_name_reason(name: str) -> str:
    if name.startswith("."):
        return "hidden"
    ending = next(ending for ending in IGNORED_NAME_ENDINGS if name.lower().endswith(ending))
    return f"still being written ('{ending}')"


# --- ingestion -------------------------------------------------------------------------------


def ingest_sources(
    sources: Sequence[str | Path],
    previous_owners: Mapping[str, Location] | None = None,
    *,
    on_file: Callable[[FileSummary], None] | None = None,
) -> IngestResult:
    """Read every source file and accept one occurrence of each sample; the others are its
    duplicates. The accepted occurrence is the one accepted before (``previous_owners``:
    source_id -> location) while it is still there, so adding a file never moves a sample's
    lineage; a new sample is accepted at its first occurrence in (file path, row, turn) order.
    ``on_file`` sees each file's summary as soon as it has been accounted for."""
    scan = scan_source_paths(sources)
    result = IngestResult(skipped=scan.skipped)
    read = [(path, _read_file(path)) for path in scan.files]
    owners = _owners(
        (row for _, (_, _, rows) in read for row in rows if isinstance(row, SourceRow)), previous_owners or {}
    )
    for path, (size_bytes, content_hash, rows) in read:
        accepted = rejected = duplicate = 0
        for row in rows:
            if isinstance(row, RejectedRow):
                result.rejected.append(row)
                rejected += 1
            elif owners[row.source_id] == row.location:
                result.accepted.append(row)
                accepted += 1
            else:
                result.duplicates.append(
                    DuplicateRow(row.source_file, row.source_row, row.source_turn, row.source_id)
                )
                duplicate += 1
        result.files.append(
            FileSummary(
                source_file=str(path),
                file_format=path.suffix.lower().removeprefix("."),
                size_bytes=size_bytes,
                content_hash=content_hash,
                rows_read=len(rows),
                accepted=accepted,
                rejected=rejected,
                duplicate=duplicate,
            )
        )
        if on_file is not None:
            on_file(result.files[-1])
    return result


def _owners(rows: Iterable[SourceRow], previous_owners: Mapping[str, Location]) -> dict[str, Location]:
    """Where each sample is accepted: its previous location while that row still holds it; else
    its first row in the file that held it before (rows above it moved it); else its first row."""
    first: dict[str, Location] = {}
    first_in_previous_file: dict[str, Location] = {}
    still_in_place: dict[str, Location] = {}
    for row in rows:
        source_id, location = row.source_id, row.location
        first.setdefault(source_id, location)
        previous = previous_owners.get(source_id)
        if previous is None:
            continue
        if location == previous:
            still_in_place[source_id] = location
        elif location[0] == previous[0]:
            first_in_previous_file.setdefault(source_id, location)
    return first | first_in_previous_file | still_in_place


def _read_file(path: Path) -> tuple[int, str, list[_ParsedRow]]:
    """(size, sha256, parsed rows). A file that cannot be parsed is one rejected row, so a
    half-read file never leaves some of its rows behind."""
    source_file = str(path)
    suffix = path.suffix.lower()
    size_bytes, content_hash = 0, ""
    try:
        # One open file for hash and parse: both see the same bytes even if the path is replaced.
        with path.open("rb") as stream:
            content_hash = hashlib.file_digest(stream, "sha256").hexdigest()
            size_bytes = stream.tell()
            stream.seek(0)
            return size_bytes, content_hash, _READERS[suffix](stream, source_file)
    except (OSError, ValueError, RecursionError, pa.ArrowException) as error:
        reason = f"{source_file}: cannot read {suffix.removeprefix('.')} file: {error}"
        field_name = error.column if isinstance(error, MissingColumnError) else None
        return size_bytes, content_hash, [RejectedRow(source_file, None, None, field_name, reason)]


def _read_json(stream: BinaryIO, source_file: str) -> list[_ParsedRow]:
    document = _json_loads(stream.read().removeprefix(_UTF8_BOM))
    if not isinstance(document, list):
        raise ValueError(f"expected a JSON array of records, got {_type_name(document)}")
    rows: list[_ParsedRow] = []
    for row_number, record in enumerate(document, start=1):
        rows.extend(_record_rows(record, source_file, row_number))
    return rows


def _read_jsonl(stream: BinaryIO, source_file: str) -> list[_ParsedRow]:
    rows: list[_ParsedRow] = []
    for line_number, line in enumerate(stream, start=1):
        if line_number == 1:
            line = line.removeprefix(_UTF8_BOM)
        if not line.strip():
            continue
        try:
            record = _json_loads(line)
        except (ValueError, RecursionError) as error:
            problem = f"line {line_number} is not valid JSON ({error})"
            rows.append(_reject(source_file, line_number, problem))
            continue
        rows.extend(_record_rows(record, source_file, line_number))
    return rows


def _read_parquet(stream: BinaryIO, source_file: str) -> list[_ParsedRow]:
    parquet = pq.ParquetFile(stream)
    # Only the columns we use: extra columns may be huge or of types not worth converting.
    columns = [name for name in parquet.schema_arrow.names if name in _PARQUET_COLUMNS]
    rows: list[_ParsedRow] = []
    row_number = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            row_number += 1
            rows.extend(_record_rows(record, source_file, row_number))
    return rows


class MissingColumnError(ValueError):
    """A delimited file whose header lacks a required column: the whole file is rejected."""

    def __init__(self, column: str, header: Sequence[str]) -> None:
        super().__init__(f"the header has no '{column}' column (columns: {', '.join(header) or 'none'})")
        self.column = column


def _read_delimited(stream: BinaryIO, source_file: str, delimiter: str) -> list[_ParsedRow]:
    """CSV or TSV with a header row naming instruction, output and optionally input; other
    columns are ignored. A row is a record (a quoted field may span lines); blank lines are not
    rows. Broken quoting makes the rest of the file unreadable, so it rejects the whole file."""
    # newline="" hands line breaks inside quoted fields to csv untouched; utf-8-sig drops a BOM.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    try:
        header = [name.strip() for name in next(reader, [])]
        for column in _CSV_COLUMNS:
            if header.count(column) > 1:
                raise ValueError(f"the header names column '{column}' {header.count(column)} times")
        for column in _CSV_REQUIRED_COLUMNS:
            if column not in header:
                raise MissingColumnError(column, header)
        position = {column: header.index(column) for column in _CSV_COLUMNS if column in header}
        rows: list[_ParsedRow] = []
        for row_number, values in enumerate((values for values in reader if values), start=1):
            if len(values) != len(header):
                problem = f"has {len(values)} fields, the header has {len(header)}"
                rows.append(_reject(source_file, row_number, problem))
                continue
            instruction, input_, output = (
                (column, values[position[column]] if column in position else "") for column in _CSV_COLUMNS
            )
            rows.append(_validated_row(instruction, input_, output, source_file, row_number, None))
        return rows
    except csv.Error as error:
        raise ValueError(f"line {reader.line_num}: {error}") from error
    finally:
        text.detach()  # the caller owns the binary stream


_READERS: dict[str, _Reader] = {
    ".csv": partial(_read_delimited, delimiter=","),
    ".tsv": partial(_read_delimited, delimiter="\t"),
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


# --- records ---------------------------------------------------------------------------------


def _record_rows(record: object, source_file: str, source_row: int) -> list[_ParsedRow]:
    """One row for an Alpaca record, one per human->assistant turn for a conversation."""
    if not isinstance(record, dict):
        problem = f"record must be an object, got {_type_name(record)}"
        return [_reject(source_file, source_row, problem)]
    for key in _CONVERSATION_KEYS:
        # A null conversation is absent: mixed Parquet files have null columns for other formats.
        if record.get(key) is not None:
            return _conversation_rows(record[key], key, source_file, source_row)
    return [
        _validated_row(
            ("instruction", record.get("instruction", _MISSING)),
            ("input", _or_empty(record.get("input", _MISSING))),
            ("output", record.get("output", _MISSING)),
            source_file,
            source_row,
            None,
        )
    ]


class _Message(NamedTuple):
    index: int
    speaker: str | None  # 'human', 'assistant' or 'system'; None when unusable
    text_key: str
    text: object  # the raw value under text_key, or _MISSING
    problem: str | None  # why the message is unusable


def _conversation_rows(
    messages: object, key: str, source_file: str, source_row: int
) -> list[_ParsedRow]:
    if not isinstance(messages, list):
        problem = f"must be an array of messages, got {_type_name(messages)}"
        return [_reject(source_file, source_row, problem, field_name=key)]
    # System messages are context, not training pairs: they neither pair nor break a pair.
    dialogue = [
        message
        for message in (_read_message(index, item) for index, item in enumerate(messages))
        if message.speaker != "system"
    ]
    rows: list[_ParsedRow] = []
    pair_count = 0
    position = 0
    while position < len(dialogue):
        current = dialogue[position]
        reply = dialogue[position + 1] if position + 1 < len(dialogue) else None
        if current.speaker == "human" and reply is not None and reply.speaker == "assistant":
            pair_count += 1
            rows.append(
                _validated_row(
                    _message_text(key, current),
                    ("input", ""),
                    _message_text(key, reply),
                    source_file,
                    source_row,
                    pair_count,
                )
            )
            position += 2
            continue
        # Kept as a rejection, not dropped silently, so every message is accounted for.
        problem = current.problem or (
            "human message has no assistant reply"
            if current.speaker == "human"
            else "assistant message does not follow a human message"
        )
        rows.append(_reject(source_file, source_row, problem, field_name=f"{key}[{current.index}]"))
        position += 1
    if pair_count == 0:
        problem = "has no complete human->assistant turn pair"
        return [_reject(source_file, source_row, problem, field_name=key)]
    return rows


def _message_text(key: str, message: _Message) -> tuple[str, object]:
    """(field name, raw text) of a message, validated like an Alpaca field."""
    return f"{key}[{message.index}].{message.text_key}", message.text


def _read_message(index: int, message: object) -> _Message:
    if not isinstance(message, dict):
        return _Message(index, None, "", _MISSING, f"must be an object, got {_type_name(message)}")
    # Parquet structs carry every key of a mixed file, so a null key counts as absent.
    role_key = next((key for key in _TEXT_KEY_FOR_ROLE_KEY if message.get(key) is not None), None)
    if role_key is None:
        return _Message(index, None, "", _MISSING, "has neither 'from' nor 'role'")
    text_key = _TEXT_KEY_FOR_ROLE_KEY[role_key]
    text = message.get(text_key, _MISSING)
    role = message[role_key]
    if not isinstance(role, str):
        problem = f"'{role_key}' must be a string, got {_type_name(role)}"
        return _Message(index, None, text_key, text, problem)
    role = role.strip().lower()
    if role in _HUMAN_ROLES:
        return _Message(index, "human", text_key, text, None)
    if role in _ASSISTANT_ROLES:
        return _Message(index, "assistant", text_key, text, None)
    if role in _SYSTEM_ROLES:
        return _Message(index, "system", text_key, text, None)
    problem = f"role {role!r} is not human, assistant or system"
    return _Message(index, None, text_key, text, problem)


def _validated_row(
    instruction: tuple[str, object],
    input: tuple[str, object],
    output: tuple[str, object],
    source_file: str,
    source_row: int,
    source_turn: int | None,
) -> _ParsedRow:
    """A SourceRow from (field name, raw value) pairs, or a rejection naming the first bad field."""
    texts: list[str] = []
    for field_name, value in (instruction, input, output):
        if not isinstance(value, str) or not _is_valid_unicode(value):
            return _reject(source_file, source_row, _text_problem(value), field_name, source_turn)
        texts.append(value)
    sample = Sample.normalised(*texts)
    for (field_name, _), text in ((instruction, sample.instruction), (output, sample.output)):
        if not text:
            return _reject(source_file, source_row, "is empty", field_name, source_turn)
    return SourceRow(sample, source_file, source_row, source_turn)


def _is_valid_unicode(text: str) -> bool:
    """json (unlike orjson) lets lone surrogates such as "\\ud800" through; they cannot be hashed
    or stored, so they are rejected like any other bad value."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text_problem(value: object) -> str:
    """Why ``value`` is not usable text."""
    if value is _MISSING:
        return "is missing"
    if value is None:
        return "is null"
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    return "is not valid Unicode (contains a lone surrogate)"


def _or_empty(value: object) -> object:
    """``input`` is optional: missing or null means no input."""
    return "" if value is _MISSING or value is None else value


def _reject(
    source_file: str,
    source_row: int,
    problem: str,
    field_name: str | None = None,
    source_turn: int | None = None,
) -> RejectedRow:
    location = f"{source_file}: row {source_row}"
    if source_turn is not None:
        location += f" turn {source_turn}"
    subject = problem if field_name is None else f"field '{field_name}' {problem}"
    return RejectedRow(source_file, source_row, source_turn, field_name, f"{location}: {subject}")


def _type_name(value: object) -> str:
    """JSON's names for containers and null, Python's for the rest (str, int, float, bool)."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__
