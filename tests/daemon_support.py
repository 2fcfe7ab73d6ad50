"""`dagster dev` (webserver and daemon) driven as a user runs it, for the daemon test and the
daemon benchmark: a temporary instance folder, sensors read over GraphQL, runs and
materializations read from the instance's own storage, every process surely stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from support import REPO_ROOT, graphql

from mergeit_core import stages

UNFINISHED = [dg.DagsterRunStatus[name] for name in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")]
SENSORS_QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  name location { name } sensors { name sensorState { status } } } } } }"""


def instance_folder(home: Path) -> Path:
    """A Dagster instance folder with the project's own instance settings (telemetry off, run
    and LLM-pool concurrency limits), so runs queue as they do for users."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    return home


def serving_sensors(port: int) -> bool:
    try:
        return bool(sensor_states(port))
    except OSError:
        return False


def sensor_states(port: int) -> dict[str, str]:
    answer = graphql(port, SENSORS_QUERY).get("data") or {}
    nodes = (answer.get("repositoriesOrError") or {}).get("nodes") or []
    return {sensor["name"]: sensor["sensorState"]["status"] for node in nodes for sensor in node["sensors"]}


def _repository_selector(port: int) -> str:
    repository = graphql(port, SENSORS_QUERY)["data"]["repositoriesOrError"]["nodes"][0]
    return f'repositoryLocationName: "{repository["location"]["name"]}", repositoryName: "{repository["name"]}"'


def start_sensor(port: int, name: str) -> None:
    """Switch a sensor on, as the UI's toggle does."""
    selector = f'{{{_repository_selector(port)}, sensorName: "{name}"}}'
    result = graphql(port, f"mutation {{ startSensor(sensorSelector: {selector}) {{ __typename }} }}")
    assert result["data"]["startSensor"]["__typename"] == "Sensor", result


def sensor_ticks(port: int, name: str) -> list[dict]:
    """A sensor's latest ticks, newest first: status, skipReason, runIds."""
    selector = f'{{{_repository_selector(port)}, sensorName: "{name}"}}'
    answer = graphql(port, f"""{{ sensorOrError(sensorSelector: {selector}) {{ __typename
        ... on Sensor {{ sensorState {{ ticks(limit: 5) {{ status skipReason runIds }} }} }} }} }}""")
    sensor = answer["data"]["sensorOrError"]
    assert sensor["__typename"] == "Sensor", answer
    return sensor["sensorState"]["ticks"]


def launch_partition_run(port: int, job_name: str, partition_key: str) -> str:
    """Launch one partition of a job, as the UI's launchpad does; returns the run id."""
    selector = f'{{{_repository_selector(port)}, jobName: "{job_name}"}}'
    tags = f'[{{key: "dagster/partition", value: "{partition_key}"}}]'
    result = graphql(port, f"""mutation {{ launchRun(executionParams: {{selector: {selector},
        executionMetadata: {{tags: {tags}}}}}) {{ __typename ... on LaunchRunSuccess {{ run {{ runId }} }}
        ... on PythonError {{ message }} }} }}""")
    answer = result["data"]["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", result
    return answer["run"]["runId"]


@dataclass(frozen=True)
class LaunchedRuns:
    """Runs created since a moment, by what they materialize."""

    ingest: list[dg.DagsterRun]
    cluster_refresh: list[dg.DagsterRun]
    dataset: list[dg.DagsterRun]
    other: list[dg.DagsterRun]

    @property
    def all(self) -> list[dg.DagsterRun]:
        return [*self.ingest, *self.cluster_refresh, *self.dataset, *self.other]

    @property
    def not_successful(self) -> list[dg.DagsterRun]:
        return [run for run in self.all if run.status != dg.DagsterRunStatus.SUCCESS]

    def describe(self) -> str:
        return (f"{len(self.ingest)} ingest, {len(self.cluster_refresh)} cluster refresh, "
                f"{len(self.dataset)} merged_dataset, {len(self.other)} other")


def runs_since(instance: dg.DagsterInstance, since: float) -> LaunchedRuns:
    records = [r for r in instance.get_run_records(ascending=True) if r.create_timestamp.timestamp() >= since]
    kinds: dict[str, list[dg.DagsterRun]] = {"ingest": [], "cluster_refresh": [], "dataset": [], "other": []}
    for record in records:
        selection = {key.to_user_string() for key in record.dagster_run.asset_selection or ()}
        kind = ("ingest" if "source_instructions" in selection else "cluster_refresh" if "selected_subset" in selection
                else "dataset" if selection == {"merged_dataset"} else "other")
        kinds[kind].append(record.dagster_run)
    return LaunchedRuns(**kinds)


def dataset_is_current(instance: dg.DagsterInstance, db: Path, since: float) -> bool:
    """Nothing queued or running, no cluster partition stale, and merged_dataset materialized
    after every per-cluster merge and after ``since``."""
    if instance.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED), limit=1):
        return False
    dataset = instance.get_latest_materialization_event(dg.AssetKey("merged_dataset"))
    merges = instance.get_latest_materialization_event(dg.AssetKey("merged_samples"))
    if dataset is None or dataset.timestamp < since or (merges and merges.timestamp > dataset.timestamp):
        return False
    return not stages.stale_partitions(db)


def wait_until_current(
    instance: dg.DagsterInstance, db: Path, since: float, timeout_s: float, poll_s: float = 1.0
) -> float:
    """Seconds from ``since`` until the dataset is current; raises TimeoutError past the bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if dataset_is_current(instance, db, since):
            return time.time() - since
        time.sleep(poll_s)
    raise TimeoutError(f"merged_dataset not current {timeout_s:.0f} s after the drop; runs: "
                       f"{runs_since(instance, since).describe()}")
