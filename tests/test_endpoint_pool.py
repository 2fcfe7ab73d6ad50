"""Several endpoints as one backend: requests spread by load, failing endpoints set aside, and
the embedded llama.cpp servers (one per core group) all gone after the block."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from llm_support import Fail, Reply, ScriptedServer, in_order, merge_json, sample

from mergeit_core.merge.backends import open_backend
from mergeit_core.merge.cache import DuckDBResponseCache
from mergeit_core.merge.endpoint_pool import EndpointPool
from mergeit_core.merge.engine import MergeGroup, MergeReport, run_merges
from mergeit_core.merge.llama_server import default_gguf_path, llama_cpp_servers, server_layout
from mergeit_core.merge.llm import LLMConfig
from mergeit_core.merge.openai_backend import OpenAICompatibleBackend

KEY_ENV = "MERGEIT_TEST_LLM_KEY"
SLOW_VALID = Reply(merge_json(), delay_s=0.3)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")


def groups(count: int) -> list[MergeGroup]:
    return [MergeGroup(f"g{i}", "cluster-0", (sample(f"g{i}", 1), sample(f"g{i}", 2))) for i in range(count)]


def merge_over(base_url: str, tmp_path: Path, batch: list[MergeGroup], concurrency: int) -> tuple[MergeReport, EndpointPool]:
    config = LLMConfig(
        backend="openai", model="scripted", base_url=base_url, api_key_env=KEY_ENV,
        concurrency=concurrency, request_timeout_s=5.0, max_retries=2, total_timeout_s=30.0,
    )
    with open_backend(config) as backend:
        assert isinstance(backend, EndpointPool)
        # Which endpoint answers is under test, not the answers: the merge gate stays off.
        cache = DuckDBResponseCache(tmp_path / "cache.duckdb")
        return run_merges(batch, backend, cache, config, gate=None), backend


@pytest.fixture
def three_servers() -> Iterator[list[ScriptedServer]]:
    with ExitStack() as stack:
        yield [stack.enter_context(ScriptedServer(in_order(then=SLOW_VALID))) for _ in range(3)]


def test_base_url_names_one_or_several_endpoints() -> None:
    assert LLMConfig(backend="openai", model="m").base_urls == [None]
    assert LLMConfig(backend="openai", model="m", base_url=" http://a/v1 , http://b/v1,").base_urls == [
        "http://a/v1", "http://b/v1"
    ]
    with open_backend(LLMConfig(backend="openai", model="m", base_url="http://a/v1")) as backend:
        assert isinstance(backend, OpenAICompatibleBackend)  # one endpoint: no pool in between


def test_requests_are_spread_by_load_over_every_endpoint(three_servers: list[ScriptedServer], tmp_path: Path) -> None:
    report, pool = merge_over(",".join(s.base_url for s in three_servers), tmp_path, groups(12), concurrency=6)
    assert report.merged == 12
    # Six in flight over three equally slow endpoints: each holds two at a time, four in all.
    assert [s.request_count for s in three_servers] == [4, 4, 4]
    assert [s.max_in_flight for s in three_servers] == [2, 2, 2]
    assert [e.answered for e in pool.endpoints] == [4, 4, 4]


def test_a_failing_endpoint_is_taken_out_and_every_request_still_succeeds(tmp_path: Path) -> None:
    always_503 = in_order(then=Fail(503))
    with ScriptedServer(always_503) as failing, ScriptedServer(in_order(then=Reply(merge_json(), delay_s=0.1))) as healthy:
        dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens, the connection is refused
        report, pool = merge_over(f"{failing.base_url},{dead},{healthy.base_url}", tmp_path, groups(16), concurrency=4)
    assert report.merged == 16 and report.failed == 0
    assert healthy.request_count == 16
    assert [e.answered for e in pool.endpoints] == [0, 0, 16]
    # Each failure took the endpoint out for a cool-down that doubles (1 s, 2 s, 4 s, ...), so it
    # saw a few requests (logarithmic in the run's length), every one of them a failure in a row.
    assert 1 <= failing.request_count < healthy.request_count and pool.endpoints[0].failures == failing.request_count
    assert pool.endpoints[1].failures >= 1


def test_when_every_endpoint_fails_the_groups_fail_and_nothing_hangs(tmp_path: Path) -> None:
    with ScriptedServer(in_order(then=Fail(500))) as one, ScriptedServer(in_order(then=Fail(502))) as two:
        report, _ = merge_over(f"{one.base_url},{two.base_url}", tmp_path, groups(2), concurrency=2)
    assert report.failed == 2 and report.merged == 0
    assert all("LLMUnavailableError" in (o.error or "") for o in report.outcomes)


def test_an_endpoint_that_recovers_comes_back_into_rotation(tmp_path: Path) -> None:
    flaky = in_order(Fail(503), then=Reply(merge_json(), delay_s=0.3))
    with ScriptedServer(flaky) as recovering, ScriptedServer(in_order(then=Reply(merge_json(), delay_s=0.3))) as steady:
        report, pool = merge_over(f"{recovering.base_url},{steady.base_url}", tmp_path, groups(20), concurrency=2)
    assert report.merged == 20
    # Out for one second after its failure, then answering again alongside the other.
    assert pool.endpoints[0].answered > 0 and pool.endpoints[0].failures == 0


def test_default_layout_gives_every_core_to_some_server() -> None:
    servers, threads = server_layout()
    cpus = len(os.sched_getaffinity(0))
    assert servers == min(cpus, 4) and servers * threads <= max(cpus, 1)
    assert server_layout(servers=1) == (1, max(cpus, 1))


@pytest.mark.llm
def test_embedded_servers_share_the_merges_and_none_outlives_the_block(tmp_path: Path) -> None:
    config = LLMConfig(backend="llama_cpp", servers=2, max_tokens=48, concurrency=4)
    with llama_cpp_servers(default_gguf_path(), servers=2) as servers:
        pids = [server.pid for server in servers]
        assert len(set(pids)) == 2 and len({server.port for server in servers}) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    with open_backend(config) as backend:
        assert isinstance(backend, EndpointPool) and len(backend.endpoints) == 2
        report = run_merges(groups(4), backend, DuckDBResponseCache(tmp_path / "cache.duckdb"), config)
        answered = [e.answered for e in backend.endpoints]
    assert report.requests >= 4 and all(n >= 1 for n in answered) and sum(answered) == report.requests
