"""The Dagster UI as a person sees it, in Debian's headless Chromium driven by Playwright: the asset
graph, the cluster map, each cluster partition's own figures, and a partition launched from the UI."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
from llm_support import Reply, ScriptedServer, merge_json
from support import REPO_ROOT, bundled_rows, dagster_dev, graphql, write_jsonl
from test_dagster_graph import scalar

from mergeit_assets import pipeline
from mergeit_assets.resources import LLMResource, MergeitDuckDB, PipelineSettings
from mergeit_core.store import connect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ASSETS = ("source_instructions", "instruction_embeddings", "topic_clusters", "selected_subset", "merge_pairs",
          "merged_samples", "merged_dataset")
RUNS_OF_PARTITION = """query ($key: String!) {
  runsOrError(filter: {tags: [{key: "dagster/partition", value: $key}]}) { ... on Runs { results { runId status } } }
}"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(2400),  # starts the model, dagster dev and a run from the UI on a shared machine
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's Chromium (/usr/bin/chromium) is not installed"),
]


def metadata_value(page, key: str) -> str:
    """The value beside ``key`` in a partition's metadata table (cells: key, value, actions)."""
    return page.locator(f"xpath=//tr[td[1][normalize-space(.)='{key}']]/td[2]").first.inner_text().strip()


def test_the_ui_shows_graph_pictures_partition_figures_and_launches_a_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    sources = write_jsonl(tmp_path / "sources" / "part1.jsonl", bundled_rows()[:120])
    db = tmp_path / "ui.duckdb"
    with ScriptedServer(lambda index, body: Reply(merge_json(f"Merged {index}"))) as server:
        # The UI's runs read the same settings from the environment as this first materialization.
        env = {"MERGEIT_DB": str(db), "MERGEIT_SOURCES": str(sources), "MERGEIT_BUDGET": "12",
               "MERGEIT_THRESHOLD": "0.35", "MERGEIT_LLM_BACKEND": "openai", "MERGEIT_LLM_BASE_URL": server.base_url,
               "MERGEIT_LLM_MODEL": "scripted", "MERGEIT_LLM_API_KEY_ENV": "MERGEIT_TEST_KEY", "MERGEIT_TEST_KEY": "local"}
        for name, value in {**env, "DAGSTER_HOME": str(home)}.items():
            monkeypatch.setenv(name, value)
        resources = {
            "duckdb": MergeitDuckDB(database=str(db)),
            "pipeline": PipelineSettings(sources=[str(sources)], selection_budget=12, similarity_threshold=0.35),
            "llm": LLMResource(backend="openai", base_url=server.base_url, model="scripted",
                               api_key_env="MERGEIT_TEST_KEY"),
        }
        with dg.DagsterInstance.get() as instance:
            assert pipeline.run_all(instance, resources).success
        sizes = dict(scalar_rows(db, "SELECT cluster_key, size FROM clusters ORDER BY size, cluster_key"))
        smallest, largest = next(iter(sizes)), next(reversed(sizes))
        assert sizes[smallest] != sizes[largest]

        with dagster_dev(home, env, tmp_path / "dev.log", timeout_s=600) as port, \
                sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(120_000)  # two shared cores: the first page loads slowly
                # A first visit may put a "Join the Dagster community" dialog over any page.
                page.add_locator_handler(
                    page.get_by_text("Join the Dagster community"),
                    lambda: page.get_by_role("button", name="Skip").click(),
                )
                base = f"http://127.0.0.1:{port}"

                # The asset graph: both groups, expanded, with the seven assets (a wide window, so
                # the expanded graph fits in the screenshot).
                page.set_viewport_size({"width": 2600, "height": 1000})
                page.goto(f"{base}/asset-groups")
                page.get_by_text("5 assets").first.wait_for()
                expand = page.locator('[aria-label="unfold_more"]')
                while expand.count():
                    expand.first.click()
                    page.wait_for_timeout(1500)
                for name in ("merging", "selection"):  # the sidebar tree lists every asset by its full name
                    group = page.get_by_text(name, exact=True).first.bounding_box()
                    page.mouse.click(group["x"] - 40, group["y"] + group["height"] / 2)
                for name in ASSETS:
                    page.get_by_text(name, exact=True).filter(visible=True).first.wait_for()
                page.wait_for_timeout(2000)
                page.screenshot(path=shots / "1_asset_graph.png")
                page.set_viewport_size({"width": 1600, "height": 1000})

                # topic_clusters: the cluster map is a picture the browser decoded and shows.
                page.goto(f"{base}/assets/topic_clusters")
                row = page.locator("tr").filter(has=page.get_by_text("cluster_map", exact=True))
                row.get_by_text("[Show Markdown]").click()
                image = page.get_by_role("dialog").locator("img[src^='data:image/png']")
                image.wait_for()
                assert image.evaluate("img => img.complete && img.naturalWidth") == 512
                assert image.bounding_box()["width"] > 300
                page.screenshot(path=shots / "2_topic_clusters_cluster_map.png")
                page.keyboard.press("Escape")

                # merged_samples: two cluster partitions, each with its own figures.
                for key in (smallest, largest):
                    page.goto(f"{base}/assets/merged_samples?view=partitions&partition={key}")
                    page.get_by_text("cluster_size", exact=True).wait_for()
                    assert metadata_value(page, "cluster_size") == str(sizes[key])
                    groups = scalar(db, "SELECT count(*) FROM merged_samples WHERE cluster_key = ?", [key])
                    assert metadata_value(page, "groups") == str(groups)
                    page.screenshot(path=shots / f"3_merged_samples_{key}.png", full_page=True)

                # Launch one cluster partition from the UI and wait for the run to succeed.
                target = largest
                page.goto(f"{base}/assets/merged_samples")
                page.get_by_role("button", name="Materialize…").click()
                dialog = page.get_by_role("dialog")
                dialog.get_by_text("Select a partition or create one").click()
                # the partition list's entry (the page behind the dialog may name the same key)
                page.get_by_role("menuitem").filter(has_text=target).first.click()
                page.keyboard.press("Escape")  # closes the partition list, not the dialog
                dialog.get_by_text("1 partition", exact=True).wait_for()
                page.screenshot(path=shots / "4_launch_one_partition.png")
                before = {run["runId"] for run in runs_of(port, target)}
                dialog.get_by_role("button", name=re.compile(r"^Launch")).click()
                run_id, status = wait_for_new_run(port, target, before)
                assert status == "SUCCESS", (tmp_path / "dev.log").read_text()[-3000:]
                page.goto(f"{base}/runs/{run_id}")
                page.get_by_text("Success", exact=False).first.wait_for()
                page.screenshot(path=shots / "5_launched_run.png")
            finally:
                browser.close()
    for shot in sorted(shots.iterdir()):
        assert shot.stat().st_size > 10_000, shot


def scalar_rows(db: Path, sql: str) -> list[tuple]:
    with connect(db) as conn:
        return conn.execute(sql).fetchall()


def runs_of(port: int, partition: str) -> list[dict]:
    return graphql(port, RUNS_OF_PARTITION, {"key": partition})["data"]["runsOrError"]["results"]


def wait_for_new_run(port: int, partition: str, before: set[str], timeout_s: float = 420) -> tuple[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = [run for run in runs_of(port, partition) if run["runId"] not in before]
        if new and new[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return new[0]["runId"], new[0]["status"]
        time.sleep(3)
    raise AssertionError(f"no finished run of partition {partition} within {timeout_s}s")
