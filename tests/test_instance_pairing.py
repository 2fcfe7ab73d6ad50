"""One DuckDB file, one Dagster instance: two databases used from one folder never share the
`clusters` partitions, and `dagster dev` refuses an instance that serves another file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest
from daemon_support import sensor_ticks
from llm_support import ScriptedServer
from support import REPO_ROOT, bundled_rows, dagster_dev, graphql, printed_command, run_mergeit, wait_for, write_jsonl
from test_cli_flags import scripted_answer

from mergeit_assets.instance_home import PAIRING_FILE, SETTINGS_FILE, apply_recorded_settings
from mergeit_assets.partitions import CLUSTERS_PARTITION_NAME
from mergeit_core.settings import SettingError
from mergeit_core.store import connect

pytestmark = pytest.mark.slow
SECRET = "sk-local-never-recorded"

PARTITIONS_QUERY = """{
  assetNodes { assetKey { path } partitionKeys }
  workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
    __typename ... on PythonError { message causes { message } } } } } }
}"""


def cluster_keys(db: Path) -> set[str]:
    with connect(db, read_only=True) as conn:
        return {key for (key,) in conn.execute("SELECT cluster_key FROM clusters").fetchall()}


def instance_partitions(home: Path) -> set[str]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return set(instance.get_dynamic_partitions(CLUSTERS_PARTITION_NAME))


@pytest.fixture(scope="module")
def two_databases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with its own dagster_home, where a.duckdb and then b.duckdb were run."""
    workdir = tmp_path_factory.mktemp("project")
    (workdir / "dagster_home").mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", workdir / "dagster_home" / "dagster.yaml")
    data = bundled_rows()
    write_jsonl(workdir / "a" / "rows.jsonl", data[:90])  # 6 clusters
    write_jsonl(workdir / "b" / "rows.jsonl", data[100:132])  # 4 clusters
    # The key lives in a MERGEIT_* variable here, which must still never be printed or recorded.
    env = {"MERGEIT_LLM_BACKEND": "openai", "MERGEIT_LLM_MODEL": "stub",
           "MERGEIT_LLM_API_KEY_ENV": "MERGEIT_LOCAL_CREDENTIAL", "MERGEIT_LOCAL_CREDENTIAL": SECRET}
    env.pop("DAGSTER_HOME", None)
    with ScriptedServer(scripted_answer) as server:
        env["MERGEIT_LLM_BASE_URL"] = server.base_url
        for name in ("a", "b"):
            result = run_mergeit("run", name, "--db", f"{name}.duckdb", cwd=workdir, env=env)
            assert result.returncode == 0, result.stderr[-3000:]
            (workdir / f"{name}.summary").write_text(result.stdout)
    return workdir


def test_each_database_gets_an_instance_of_its_own(two_databases: Path) -> None:
    a_home, b_home = two_databases / "dagster_home", two_databases / "b.dagster_home"
    assert (a_home / PAIRING_FILE).read_text().strip() == str(two_databases / "a.duckdb")
    assert (b_home / PAIRING_FILE).read_text().strip() == str(two_databases / "b.duckdb")
    assert "telemetry" in (b_home / "dagster.yaml").read_text()  # the project's instance config
    a_keys, b_keys = cluster_keys(two_databases / "a.duckdb"), cluster_keys(two_databases / "b.duckdb")
    assert len(a_keys) == 6 and len(b_keys) == 4
    assert instance_partitions(a_home) == a_keys and instance_partitions(b_home) == b_keys


def test_an_instance_serving_another_database_is_refused(two_databases: Path) -> None:
    result = run_mergeit("run", "b", "--db", "b.duckdb", "--dagster-home", "dagster_home",
                         cwd=two_databases, timeout=120)
    assert result.returncode == 2
    assert f"serves {two_databases / 'a.duckdb'}, not {two_databases / 'b.duckdb'}" in result.stderr
    assert instance_partitions(two_databases / "dagster_home") == cluster_keys(two_databases / "a.duckdb")


def loaded_partitions(data: dict) -> set[str]:
    """The `clusters` partition keys a loaded code location shows for merged_samples."""
    location = data["workspaceOrError"]["locationEntries"][0]["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    [node] = [n for n in data["assetNodes"] if n["assetKey"]["path"] == ["merged_samples"]]
    return set(node["partitionKeys"])


def workspace_loaded(port: int) -> bool:
    entries = graphql(port, PARTITIONS_QUERY)["data"]["workspaceOrError"]["locationEntries"]
    return bool(entries and entries[0]["locationOrLoadError"])


@pytest.mark.parametrize("database", ["a", "b"])
def test_dagster_dev_shows_the_partitions_of_the_file_it_reads(two_databases: Path, database: str) -> None:
    home, db = two_databases / "dagster_home", two_databases / f"{database}.duckdb"
    env = {"MERGEIT_DB": str(db), "MERGEIT_SOURCES": str(two_databases / "a")}
    with dagster_dev(home, env, two_databases / "dev.log", ready=workspace_loaded) as port:
        data = graphql(port, PARTITIONS_QUERY)["data"]
    if database == "a":
        assert loaded_partitions(data) == cluster_keys(db)
    else:  # the instance serves a.duckdb: the code location refuses to load, saying why
        location = data["workspaceOrError"]["locationEntries"][0]["locationOrLoadError"]
        assert location["__typename"] == "PythonError"
        said = location["message"] + "".join(cause["message"] for cause in location["causes"])
        assert f"serves {two_databases / 'a.duckdb'}, not {db}" in said


def sensors_ticked(port: int) -> bool:
    """Every project sensor has finished a tick."""
    return all(
        any(tick["status"] != "STARTED" for tick in sensor_ticks(port, name))
        for name in ("source_files_sensor", "stale_clusters_sensor", "automation_sensor")
    )


def test_the_summary_names_a_dagster_dev_command_that_works_where_mergeit_ran(two_databases: Path) -> None:
    """Run from a data folder (no pyproject.toml there), the printed command loads the project,
    shows that database's partitions and watches the sources `mergeit run` read, with its
    settings: the sensors' first ticks find nothing to do, so the database stays as that run left
    it and the same `mergeit run` again finds nothing changed."""
    env, command = printed_command((two_databases / "b.summary").read_text())
    assert env["DAGSTER_HOME"] == str(two_databases / "b.dagster_home")
    assert env["MERGEIT_DB"] == str(two_databases / "b.duckdb")
    assert env["MERGEIT_SOURCES"] == str(two_databases / "b")  # given as a relative flag
    assert env["MERGEIT_LLM_BACKEND"] == "openai" and env["MERGEIT_LLM_API_KEY_ENV"] == "MERGEIT_LOCAL_CREDENTIAL"
    assert "MERGEIT_LOCAL_CREDENTIAL" not in env and SECRET not in (two_databases / "b.summary").read_text()
    assert command == ["dagster", "dev", "-m", "mergeit_assets.definitions"]
    home = Path(env["DAGSTER_HOME"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs_before = len(instance.get_run_records())
    with dagster_dev(home, env, two_databases / "dev.log", ready=workspace_loaded, cwd=two_databases,
                     command=command) as port:
        assert loaded_partitions(graphql(port, PARTITIONS_QUERY)["data"]) == cluster_keys(two_databases / "b.duckdb")
        wait_for(lambda: sensors_ticked(port), timeout_s=120, what="a tick of every sensor")
        [source_tick, *_] = sensor_ticks(port, "source_files_sensor")
    assert source_tick["status"] == "SKIPPED" and "no new or changed" in source_tick["skipReason"], source_tick
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_run_records()) == runs_before
    again = run_mergeit("run", "b", "--db", "b.duckdb", cwd=two_databases, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing changed since run" in again.stdout, again.stdout


def test_the_instance_records_the_settings_of_its_latest_run(two_databases: Path) -> None:
    home = two_databases / "b.dagster_home"
    recorded = json.loads((home / SETTINGS_FILE).read_text())
    assert recorded["MERGEIT_SOURCES"] == str(two_databases / "b") and recorded["MERGEIT_LLM_MODEL"] == "stub"
    assert "MERGEIT_LOCAL_CREDENTIAL" not in recorded and SECRET not in json.dumps(recorded)
    # The environment wins; the record fills the rest, the database from the pairing.
    environ = {"MERGEIT_LLM_MODEL": "other"}
    applied = apply_recorded_settings(home, environ)
    assert environ["MERGEIT_LLM_MODEL"] == "other" and "MERGEIT_LLM_MODEL" not in applied
    assert environ["MERGEIT_SOURCES"] == str(two_databases / "b")
    assert environ["MERGEIT_DB"] == str(two_databases / "b.duckdb")


@pytest.mark.parametrize("content", ["{not json", '["MERGEIT_BUDGET"]', '{"PATH": "/tmp"}'])
def test_a_damaged_settings_record_is_named_with_the_fix(tmp_path: Path, content: str) -> None:
    (tmp_path / SETTINGS_FILE).write_text(content)
    with pytest.raises(SettingError, match=f"{tmp_path / SETTINGS_FILE}: .*delete it, or run `mergeit run` again"):
        apply_recorded_settings(tmp_path, {})


def test_dagster_dev_given_only_the_instance_reruns_its_database_alike(two_databases: Path) -> None:
    """Only DAGSTER_HOME set, as the README's `dagster dev` has it: the code location reads the
    database the instance serves and its sensors watch the sources of the latest `mergeit run`
    on it, so their first ticks find nothing to do."""
    home = two_databases / "b.dagster_home"
    with dagster_dev(home, {}, two_databases / "dev.log", ready=workspace_loaded, cwd=two_databases,
                     command=["dagster", "dev", "-m", "mergeit_assets.definitions"]) as port:
        assert loaded_partitions(graphql(port, PARTITIONS_QUERY)["data"]) == cluster_keys(two_databases / "b.duckdb")
        wait_for(lambda: sensors_ticked(port), timeout_s=120, what="a tick of every sensor")
        [source_tick, *_] = sensor_ticks(port, "source_files_sensor")
    assert source_tick["status"] == "SKIPPED" and "no new or changed" in source_tick["skipReason"], source_tick
