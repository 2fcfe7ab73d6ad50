"""The real embedded llama.cpp server with the bundled SmolLM2-135M (small max_tokens: fast)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.endpoint_pool import EndpointPool
from mergeit_core.merge.engine import MergeGroup, run_merges
from mergeit_core.merge.llama_server import LlamaCppServer, default_gguf_path
from mergeit_core.merge.llm import LLMConfig, LLMUnavailableError, StructuredOutputForm
from mergeit_core.merge.openai_backend import OpenAICompatibleBackend
from mergeit_core.records import Sample

pytestmark = pytest.mark.llm

# A schema no model answers unprompted: an enum of made-up codes and a constant.
CODE_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["ZEBRA-42", "QUOKKA-7"]},
        "stamp": {"const": "MERGEIT-OK"},
    },
    "required": ["verdict", "stamp"],
    "additionalProperties": False,
}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

ALPACA_GROUPS = [
    (
        Sample("Name three primary colours.", "", "Red, blue and yellow."),
        Sample("Which colour do you get by mixing blue and yellow?", "", "Green."),
    ),
    (
        Sample("Convert 5 kilometres to miles.", "", "5 kilometres is about 3.11 miles."),
        Sample("How many metres are in 2 kilometres?", "", "There are 2,000 metres in 2 kilometres."),
    ),
    (
        Sample("Give a synonym for 'happy'.", "", "Joyful."),
        Sample("Give an antonym for 'happy'.", "", "Sad."),
    ),
]


def backend_for(
    server: LlamaCppServer, form: StructuredOutputForm, **config: object
) -> OpenAICompatibleBackend:
    llm_config = LLMConfig(backend="llama_cpp", max_tokens=64, max_retries=0, **config)  # type: ignore[arg-type]
    return OpenAICompatibleBackend(
        llm_config,
        base_url=server.base_url,
        model=server.model_alias,
        structured_output=form,
        api_key_env=None,
    )


async def ask_once(backend: OpenAICompatibleBackend, schema: dict[str, object]) -> str:
    try:
        return (await backend.chat(QUESTION, schema)).content
    finally:
        await backend.aclose()


def test_json_object_with_schema_really_constrains_the_output(llama_server: LlamaCppServer) -> None:
    unconstrained = httpx.post(
        f"{llama_server.base_url}/chat/completions",
        json={"model": llama_server.model_alias, "messages": QUESTION, "max_tokens": 32, "temperature": 0.25},
        timeout=60,
    ).json()["choices"][0]["message"]["content"]
    assert "ZEBRA-42" not in unconstrained and "QUOKKA-7" not in unconstrained

    answer = json.loads(asyncio.run(ask_once(backend_for(llama_server, "json_object_schema"), CODE_SCHEMA)))

    assert answer["verdict"] in {"ZEBRA-42", "QUOKKA-7"}
    assert answer["stamp"] == "MERGEIT-OK"
    assert set(answer) == {"verdict", "stamp"}


def test_llama_cpp_refuses_the_standard_json_schema_form(llama_server: LlamaCppServer) -> None:
    with pytest.raises(LLMUnavailableError, match="HTTP 500"):
        asyncio.run(ask_once(backend_for(llama_server, "json_schema"), CODE_SCHEMA))


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_the_server_listens_on_loopback_only(llama_server: LlamaCppServer) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")

    assert listening_addresses(llama_server.port) == {"0100007F"}  # 127.0.0.1, little-endian hex


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_server_runs_in_its_own_process_group_which_is_gone_after_the_block() -> None:
    with LlamaCppServer(default_gguf_path(), n_ctx=512) as server:
        pgid = server.pid
        assert process_group_alive(pgid)
        assert os.getpgid(pgid) == pgid != os.getpgid(0)

    assert not process_group_alive(pgid)


def test_real_merges_come_back_schema_valid(tmp_path: Path) -> None:
    # Two single-thread servers behind the endpoint pool, as `mergeit run` starts them on 2 cores.
    config = LLMConfig(backend="llama_cpp", max_tokens=200, concurrency=2, n_ctx=4096, servers=2)
    groups = [MergeGroup(f"g{i}", "c0", members) for i, members in enumerate(ALPACA_GROUPS)]

    with open_backend(config) as backend:
        assert isinstance(backend, EndpointPool) and backend.model == default_gguf_path().name
        # Each server decodes one request at a time: the run sends no more than there are servers.
        assert backend.max_in_flight == 2
        report = run_merges(
            groups, backend, DuckDBResponseCache(tmp_path / "m.duckdb"), config, invalid_retries=2
        )
        base_urls = [endpoint.backend.base_url for endpoint in backend.endpoints]

    # Kept or rejected by the merge gate, an answer that parsed is schema-valid (SmolLM2-135M can
    # run out of tokens mid-string; the schema still holds for what parses).
    parsed = [outcome for outcome in report.outcomes if outcome.status in ("merged", "rejected")]
    assert len(parsed) >= 2, [outcome.error for outcome in report.outcomes]
    for outcome in parsed:
        assert outcome.sample is not None and outcome.sample.instruction and outcome.sample.output
    assert report.completion_tokens > 0 and report.prompt_tokens > 0
    for base_url in base_urls:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base_url}/models", timeout=2)
