"""The unit of data: an Alpaca-style sample, its normalisation and its content id."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass

FIELDS = ("instruction", "input", "output")


def normalise_text(value: str) -> str:
    """NFC, unix newlines, no surrounding whitespace: the same text typed twice hashes the same."""
    return unicodedata.normalize("NFC", value).replace("\r\n", "\n").replace("\r", "\n").strip()


@dataclass(frozen=True)
class Sample:
    instruction: str
    input: str
    output: str

    @classmethod
    def normalised(cls, instruction: str, input: str, output: str) -> Sample:
        return cls(normalise_text(instruction), normalise_text(input), normalise_text(output))

    @property
    def source_id(self) -> str:
        return content_id(self)

    @property
    def embedding_text(self) -> str:
        """What the paper embeds: the instruction, plus the input when there is one."""
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction

    def as_dict(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def stable_hash(payload: object, length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``payload``: ids and cache keys that survive reruns."""
    canonical = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


def content_id(sample: Sample) -> str:
    return stable_hash([sample.instruction, sample.input, sample.output])


def group_id(source_ids: list[str]) -> str:
    """A merge group's id derives from its members, in any order."""
    return "g" + stable_hash(sorted(source_ids))
