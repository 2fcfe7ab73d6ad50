"""The `clusters` dynamic partitions, shared by the per-cluster assets and the sensors."""

import dagster as dg

CLUSTERS_PARTITION_NAME = "clusters"

clusters_partitions = dg.DynamicPartitionsDefinition(name=CLUSTERS_PARTITION_NAME)
