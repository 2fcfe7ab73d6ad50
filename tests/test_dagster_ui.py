"""`dagster dev` from the repository root serves the assets, their partitions and the sensors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support import dagster_dev, graphql

QUERY = """{
  assetNodes { assetKey { path } isPartitioned partitionDefinition { dimensionTypes { dynamicPartitionsDefinitionName } } }
}"""


@pytest.mark.slow
def test_dagster_dev_serves_the_asset_graph(tmp_path: Path, dagster_home: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = {"MERGEIT_DB": str(tmp_path / "ui.duckdb"), "MERGEIT_SOURCES": str(tmp_path / "empty")}
    with dagster_dev(dagster_home, env, tmp_path / "dev.log") as port:
        answer = graphql(port, QUERY)
        nodes = {"/".join(n["assetKey"]["path"]): n for n in answer["data"]["assetNodes"]}
        assert set(nodes) == {
            "source_instructions", "instruction_embeddings", "topic_clusters",
            "selected_subset", "merge_pairs", "merged_samples", "merged_dataset",
        }
        for name in ("selected_subset", "merge_pairs", "merged_samples"):
            assert nodes[name]["isPartitioned"]
            dims = nodes[name]["partitionDefinition"]["dimensionTypes"]
            assert [d["dynamicPartitionsDefinitionName"] for d in dims] == ["clusters"]
        assert not nodes["merged_dataset"]["isPartitioned"]
    # Bound to 127.0.0.1 only, and gone after the stop.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
