"""Jobs the sensors target: the unpartitioned upstream, and the per-cluster assets of one cluster
(a UI run) or of a partition range in one run (the stale-clusters sensor)."""

import dagster as dg

from mergeit_assets.assets.merging import merged_samples
from mergeit_assets.assets.selection import (
    instruction_embeddings,
    merge_pairs,
    selected_subset,
    source_instructions,
    topic_clusters,
)

ingest_and_cluster_job = dg.define_asset_job(
    "ingest_and_cluster",
    selection=[source_instructions, instruction_embeddings, topic_clusters],
    description="Read the sources, embed new rows, re-cluster.",
)

refresh_cluster_job = dg.define_asset_job(
    "refresh_cluster",
    selection=[selected_subset, merge_pairs, merged_samples],
    description="Select, group and merge one cluster, or a range of clusters in one run.",
)
