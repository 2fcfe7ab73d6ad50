"""The OpenAI-compatible path under injected faults, against a scripted local server."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import duckdb
import httpx
import pytest
from llm_support import Fail, Reply, ScriptedServer, in_order, last_user_message, merge_json, sample

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.engine import MergeGroup, MergeOutcome, MergeReport, run_merges
from mergeit_core.merge.llm import LLMConfig, LLMConfigurationError
from mergeit_core.merge.openai_backend import OpenAICompatibleBackend, backoff_s, retry_after_s
from mergeit_core.merge.prompt import MERGED_SAMPLE_SCHEMA

KEY_ENV = "MERGEIT_TEST_LLM_KEY"
SECRET = "sk-test-7f3a9c1e-SECRET"
VALID = Reply(merge_json("Merged task", "", "Merged answer"))


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def response_cache(tmp_path: Path) -> DuckDBResponseCache:
    return DuckDBResponseCache(tmp_path / "mergeit.duckdb")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(in_order(then=VALID)) as running:
        yield running


def config_for(server: ScriptedServer, **overrides: object) -> LLMConfig:
    base = LLMConfig(
        backend="openai",
        model="scripted-model",
        base_url=server.base_url,
        api_key_env=KEY_ENV,
        max_tokens=64,
        concurrency=4,
        request_timeout_s=5.0,
        max_retries=2,
        total_timeout_s=20.0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def groups(count: int, prefix: str = "g") -> list[MergeGroup]:
    return [
        MergeGroup(f"{prefix}{i}", "cluster-0", (sample(f"{prefix}{i}", 1), sample(f"{prefix}{i}", 2)))
        for i in range(count)
    ]


def merge(
    server: ScriptedServer,
    response_cache: DuckDBResponseCache,
    batch: list[MergeGroup],
    **run_options: object,
) -> MergeReport:
    config = config_for(server, **run_options.pop("config", {}))  # type: ignore[arg-type]
    # Transport faults are the subject here, and the scripted answers are placeholders the merge
    # gate would reject; the gate has its own tests.
    run_options.setdefault("gate", None)
    with open_backend(config) as backend:
        return run_merges(batch, backend, response_cache, config, **run_options)  # type: ignore[arg-type]


def cache_rows(response_cache: DuckDBResponseCache) -> list[tuple[str, bool]]:
    with duckdb.connect(str(response_cache.db_path), read_only=True) as conn:
        return conn.execute("SELECT purpose, valid FROM llm_cache ORDER BY cache_key").fetchall()


# --- what goes over the wire ---------------------------------------------------------------------


def test_openai_backend_sends_json_schema_response_format(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    report = merge(server, response_cache, groups(1))

    assert report.merged == 1
    body = server.requests[0].body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": MERGED_SAMPLE_SCHEMA, "strict": True},
    }
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("scripted-model", 0.25, 64)
    assert "Instruction 1 of group g0" in last_user_message(body)


def test_llama_cpp_form_sends_the_schema_inside_json_object(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    merge(server, response_cache, groups(1), config={"structured_output": "json_object_schema"})

    assert server.requests[0].body["response_format"] == {
        "type": "json_object",
        "schema": MERGED_SAMPLE_SCHEMA,
    }


def test_repeat_penalty_goes_only_to_the_llama_cpp_server(server: ScriptedServer) -> None:
    async def ask(config: LLMConfig, backend_name: str) -> None:
        backend = OpenAICompatibleBackend(
            config, base_url=server.base_url, model="scripted-model",
            structured_output=config.structured_output_form, api_key_env=KEY_ENV, backend=backend_name,
        )
        try:
            await backend.chat([{"role": "user", "content": "merge"}], MERGED_SAMPLE_SCHEMA)
        finally:
            await backend.aclose()

    # The embedded server's config: no base URL or model name of its own (the backend gets the URL).
    llama = replace(config_for(server), backend="llama_cpp", model="", base_url=None, repeat_penalty=1.15)
    asyncio.run(ask(llama, "llama_cpp"))
    asyncio.run(ask(replace(config_for(server), repeat_penalty=1.15), "openai"))

    assert server.requests[0].body["repeat_penalty"] == 1.15
    assert "repeat_penalty" not in server.requests[1].body  # OpenAI and vLLM servers do not know it
    # It shapes llama.cpp's answers, so it is part of their cache key and provenance only.
    assert llama.sampling_params()["repeat_penalty"] == 1.15
    assert "repeat_penalty" not in replace(config_for(server), repeat_penalty=1.15).sampling_params()


def test_api_key_is_sent_but_never_stored_or_shown(
    server: ScriptedServer, response_cache: DuckDBResponseCache, tmp_path: Path
) -> None:
    report = merge(server, response_cache, groups(2))

    assert report.merged == 2
    assert {request.headers["authorization"] for request in server.requests} == {f"Bearer {SECRET}"}
    config = config_for(server)
    assert SECRET not in repr(config) and KEY_ENV in repr(config)
    with open_backend(config) as backend:
        assert SECRET not in repr(backend)
    assert SECRET not in repr(report)
    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert stored and SECRET.encode() not in stored


def test_missing_api_key_for_openai_itself_stops_the_run_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV)
    config = LLMConfig(backend="openai", model="gpt-4o", api_key_env=KEY_ENV)  # no base URL: OpenAI's own

    with open_backend(config) as backend, pytest.raises(LLMConfigurationError, match=KEY_ENV):
        asyncio.run(backend.chat([{"role": "user", "content": "hi"}], MERGED_SAMPLE_SCHEMA))


def test_a_self_hosted_server_is_asked_without_a_key_and_a_refusal_names_the_variable(
    server: ScriptedServer, response_cache: DuckDBResponseCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    report = merge(server, response_cache, groups(1))
    assert report.merged == 1
    assert SECRET not in server.requests[0].headers["authorization"]

    server.script = in_order(then=Fail(401))
    with pytest.raises(LLMConfigurationError, match=rf"HTTP 401.*\${KEY_ENV}"):
        merge(server, response_cache, groups(2, prefix="other"))


# --- transport faults: the client's retries ----------------------------------------------------


def test_429_is_retried_after_the_delay_the_server_asks_for(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = in_order(Fail(429, retry_after="1"), then=VALID)

    report = merge(server, response_cache, groups(1))

    assert report.merged == 1 and server.request_count == 2
    gap = server.requests[1].arrived_at - server.requests[0].arrived_at
    # The client's own backoff would wait at most 0.5 s before a first retry.
    assert gap >= 0.95


def test_5xx_then_success_merges(server: ScriptedServer, response_cache: DuckDBResponseCache) -> None:
    server.script = in_order(Fail(500), Fail(503), then=VALID)

    report = merge(server, response_cache, groups(1), config={"max_retries": 3})

    assert report.merged == 1
    assert server.request_count == 3
    assert report.outcomes[0].requests == 1  # transport retries are the client's, not re-asks


def test_persistent_500_fails_in_bounded_time_and_is_not_cached(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = in_order(then=Fail(500))

    started = time.monotonic()
    report = merge(server, response_cache, groups(1), config={"max_retries": 2})

    assert time.monotonic() - started < 6
    outcome = report.outcomes[0]
    assert outcome.status == "failed" and outcome.sample is None
    assert "LLMUnavailableError" in (outcome.error or "") and "500" in (outcome.error or "")
    assert server.request_count == 3  # the first try and two retries
    assert cache_rows(response_cache) == []
    merge(server, response_cache, groups(1), config={"max_retries": 0})
    assert server.request_count == 4  # asked again: an outage is not an answer


def test_slow_answers_time_out_and_fail(server: ScriptedServer, response_cache: DuckDBResponseCache) -> None:
    server.script = in_order(then=Reply(merge_json(), delay_s=30))

    started = time.monotonic()
    report = merge(server, response_cache, groups(2), config={"request_timeout_s": 0.3, "max_retries": 1})

    assert time.monotonic() - started < 4
    assert [outcome.status for outcome in report.outcomes] == ["failed", "failed"]
    assert all("timed out" in (outcome.error or "") for outcome in report.outcomes)
    assert server.request_count == 4


def test_total_timeout_bounds_a_request_and_its_retries(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = in_order(then=Reply(merge_json(), delay_s=30))

    started = time.monotonic()
    report = merge(
        server,
        response_cache,
        groups(1),
        config={"request_timeout_s": 0.4, "max_retries": 10, "total_timeout_s": 1.0},
    )

    assert time.monotonic() - started < 2.5
    assert report.outcomes[0].status == "failed"
    assert "within 1.0s" in (report.outcomes[0].error or "")


def test_authentication_failure_stops_the_run(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = in_order(then=Fail(401))

    with pytest.raises(LLMConfigurationError, match="401"):
        merge(server, response_cache, groups(3), config={"concurrency": 1})
    # Not all three: the run stops (the next group may have got its slot meanwhile).
    assert server.request_count <= 2


def test_a_rejected_request_fails_only_its_group(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = lambda index, body: Fail(400) if "group g1" in last_user_message(body) else VALID

    report = merge(server, response_cache, groups(3))

    assert [outcome.status for outcome in report.outcomes] == ["merged", "failed", "merged"]
    assert "LLMRequestRejectedError" in (report.outcomes[1].error or "")
    assert "HTTP 400: scripted 400" in (report.outcomes[1].error or "")  # the server's own words
    assert server.request_count == 3  # a 400 is not retried


@pytest.mark.parametrize(
    ("headers", "wait_s"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "120"}, None),  # longer than a run should sit idle: the backoff applies
        ({"retry-after": "0"}, None),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_as_the_sdk_reads_it(headers: dict[str, str], wait_s: float | None) -> None:
    assert retry_after_s(httpx.Headers(headers)) == wait_s


def test_retry_after_as_a_date_counts_from_now() -> None:
    in_ten_s = email.utils.formatdate(time.time() + 10, usegmt=True)

    wait_s = retry_after_s(httpx.Headers({"retry-after": in_ten_s}))

    assert wait_s is not None and 8 < wait_s <= 10


def test_backoff_doubles_with_jitter_up_to_eight_seconds() -> None:
    for retry, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 8.0), (10, 8.0)]:
        waits = [backoff_s(retry) for _ in range(200)]
        assert all(0.75 * ceiling <= wait <= ceiling for wait in waits)


# --- invalid content: our re-asks ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("Sure! Here is the merged sample: instruction ...", "invalid JSON"),
        ('{"instruction": "Merged task", "output": "Merged answer"}', "missing field(s): input"),
        ('{"instruction": "Merged task", "input": "", "output": ["a"]}', "not a string"),
        ('{"instruction": "  ", "input": "", "output": "Merged answer"}', "'instruction' is empty"),
    ],
)
def test_invalid_answers_are_reasked_then_fail_and_are_cached(
    server: ScriptedServer, response_cache: DuckDBResponseCache, content: str, reason: str
) -> None:
    server.script = lambda index, body: Reply(content) if "group g1" in last_user_message(body) else VALID
    batch = groups(3)

    report = merge(server, response_cache, batch, invalid_retries=2)

    bad = report.outcomes[1]
    assert (bad.group_id, bad.status, bad.sample) == ("g1", "failed", None)
    assert reason in (bad.error or "") and "after 3 asks" in (bad.error or "")
    assert bad.requests == 3
    assert [outcome.status for outcome in report.outcomes] == ["merged", "failed", "merged"]
    assert server.request_count == 5
    assert sorted(cache_rows(response_cache)) == [("merge", False), ("merge", True), ("merge", True)]

    rerun = merge(server, response_cache, batch, invalid_retries=2)

    assert server.request_count == 5  # the cached invalid answer is not paid for twice
    assert rerun.outcomes[1].status == "failed" and rerun.outcomes[1].cache_hit
    assert rerun.outcomes[0].sample == report.outcomes[0].sample


def test_an_invalid_answer_then_a_valid_one_merges(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = in_order(Reply('{"instruction": "x", "output": "y"}'), then=VALID)

    report = merge(server, response_cache, groups(1), invalid_retries=2)

    outcome = report.outcomes[0]
    assert outcome.status == "merged" and outcome.requests == 2
    assert outcome.sample is not None and outcome.sample.output == "Merged answer"
    assert (outcome.prompt_tokens, outcome.completion_tokens) == (22, 14)
    assert cache_rows(response_cache) == [("merge", True)]


def test_an_answer_cut_at_max_tokens_is_reasked_and_never_merged(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    # Parses as a whole merge, but the model was stopped mid-output by the token cap.
    cut = Reply(merge_json("Merged task", "", "The answer begins"), finish_reason="length")
    # g0 asks first (one request in flight): cut once, then whole; g1 is cut every time.
    server.script = lambda index, body: cut if index == 0 or "group g1" in last_user_message(body) else VALID
    batch = groups(2)

    report = merge(server, response_cache, batch, config={"concurrency": 1}, invalid_retries=2)

    recovered, cut_every_time = report.outcomes
    assert (recovered.status, recovered.requests) == ("merged", 2)
    assert recovered.sample is not None and recovered.sample.output == "Merged answer"
    assert (cut_every_time.status, cut_every_time.sample, cut_every_time.requests) == ("failed", None, 3)
    assert "cut at max_tokens" in (cut_every_time.error or "")
    assert sorted(cache_rows(response_cache)) == [("merge", False), ("merge", True)]

    rerun = merge(server, response_cache, batch, invalid_retries=2)

    assert server.request_count == 5  # the cached cut answer is not paid for, nor taken as a merge
    assert rerun.outcomes[1].status == "failed" and rerun.outcomes[1].cache_hit
    assert "cut at max_tokens" in (rerun.outcomes[1].error or "")


# --- concurrency -----------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_requests_in_flight_reach_but_never_exceed_the_limit(
    server: ScriptedServer, response_cache: DuckDBResponseCache, concurrency: int
) -> None:
    server.script = in_order(then=Reply(merge_json(), delay_s=0.15))

    report = merge(server, response_cache, groups(8), config={"concurrency": concurrency})

    assert report.merged == 8
    assert server.max_in_flight == concurrency


# --- the response_cache across runs -----------------------------------------------------------------------


def test_a_second_run_sends_no_request(server: ScriptedServer, response_cache: DuckDBResponseCache) -> None:
    batch = groups(5)
    first = merge(server, response_cache, batch)
    assert server.request_count == 5

    second = merge(server, response_cache, batch)

    assert server.request_count == 5
    assert second.requests == 0 and second.cache_hits == 5
    assert [outcome.sample for outcome in second.outcomes] == [outcome.sample for outcome in first.outcomes]
    assert [outcome.cache_key for outcome in second.outcomes] == [
        outcome.cache_key for outcome in first.outcomes
    ]


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_with_only_the_remainder(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = in_order(then=Reply(merge_json(), delay_s=0.1))
    seen: list[MergeOutcome] = []

    def stop_after_two(outcome: MergeOutcome) -> None:
        seen.append(outcome)
        if len(seen) == 2:
            raise Interrupted

    batch = groups(6)
    with pytest.raises(Interrupted):
        merge(server, response_cache, batch, on_outcome=stop_after_two, config={"concurrency": 1})
    assert len(cache_rows(response_cache)) == 2
    before = server.request_count

    report = merge(server, response_cache, batch, config={"concurrency": 1})

    assert report.merged == 6 and report.cache_hits == 2
    assert server.request_count - before == 4


def test_after_the_server_stops_answering_a_rerun_asks_only_for_what_is_missing(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    server.script = in_order(VALID, VALID, then=Reply(merge_json(), delay_s=30))
    batch = groups(5)

    first = merge(
        server, response_cache, batch, config={"concurrency": 1, "request_timeout_s": 0.3, "max_retries": 0}
    )

    assert [outcome.status for outcome in first.outcomes].count("merged") == 2
    assert first.failed == 3
    server.script = in_order(then=VALID)
    before = server.request_count

    second = merge(server, response_cache, batch)

    assert second.merged == 5
    assert server.request_count - before == 3


def test_outcomes_are_reported_as_they_finish_and_listed_in_input_order(
    server: ScriptedServer, response_cache: DuckDBResponseCache
) -> None:
    # The first group answers last: completion order differs from input order.
    server.script = lambda index, body: Reply(
        merge_json(), delay_s=0.5 if "group g0" in last_user_message(body) else 0.0
    )
    finished: list[str] = []

    report = merge(
        server, response_cache, groups(3), on_outcome=lambda outcome: finished.append(outcome.group_id)
    )

    assert finished[-1] == "g0"
    assert [outcome.group_id for outcome in report.outcomes] == ["g0", "g1", "g2"]
