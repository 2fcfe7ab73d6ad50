-- mergeit DuckDB schema. Idempotent: run on every connection that writes.
-- One row per accepted source row; source_id is the content hash of the normalised fields.
CREATE TABLE IF NOT EXISTS source_instructions (
    source_id    VARCHAR PRIMARY KEY,
    source_file  VARCHAR NOT NULL,
    source_row   INTEGER NOT NULL,   -- 1-based record number in the file
    source_turn  INTEGER,            -- 1-based human->assistant pair in a ShareGPT record, else NULL
    instruction  VARCHAR NOT NULL,
    input        VARCHAR NOT NULL,
    output       VARCHAR NOT NULL,
    ingested_at  TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS rejected_rows (
    source_file  VARCHAR NOT NULL,
    source_row   INTEGER,            -- NULL when the whole file could not be read
    source_turn  INTEGER,
    field        VARCHAR,
    reason       VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS duplicate_rows (
    source_file  VARCHAR NOT NULL,
    source_row   INTEGER NOT NULL,
    source_turn  INTEGER,
    source_id    VARCHAR NOT NULL    -- the accepted row this one repeats
);

CREATE TABLE IF NOT EXISTS source_files (
    source_file  VARCHAR PRIMARY KEY,
    file_format  VARCHAR NOT NULL,
    size_bytes   BIGINT NOT NULL,
    content_hash VARCHAR NOT NULL,
    rows_read    INTEGER NOT NULL,
    accepted     INTEGER NOT NULL,
    rejected     INTEGER NOT NULL,
    duplicate    INTEGER NOT NULL,
    ingested_at  TIMESTAMP NOT NULL
);

-- A content-addressed cache: rows stay when their source row goes, so re-adding it costs nothing.
CREATE TABLE IF NOT EXISTS instruction_embeddings (
    source_id    VARCHAR NOT NULL,
    model        VARCHAR NOT NULL,
    embedding    FLOAT[384] NOT NULL,
    embedded_at  TIMESTAMP NOT NULL,
    PRIMARY KEY (source_id, model)
);

CREATE TABLE IF NOT EXISTS topic_clusters (
    source_id    VARCHAR PRIMARY KEY,
    cluster_key  VARCHAR NOT NULL
);

-- One row per live cluster: its centroid (in embedding space) warm-starts the next clustering and
-- membership_hash tells which partitions must be recomputed.
CREATE TABLE IF NOT EXISTS clusters (
    cluster_key     VARCHAR PRIMARY KEY,
    size            INTEGER NOT NULL,
    membership_hash VARCHAR NOT NULL,
    centroid        FLOAT[384] NOT NULL,
    updated_at      TIMESTAMP NOT NULL
);

-- The last full clustering (PCA + KMeans over every row); one row. Until the rows added or removed
-- since exceed mergeit_core.cluster.INCREMENTAL_MAX_SHARE of fitted_rows (or k changes), new rows
-- join their nearest centroid without a refit.
CREATE TABLE IF NOT EXISTS cluster_fit (
    fitted_rows        INTEGER NOT NULL,
    rows_changed_since INTEGER NOT NULL,
    seed               INTEGER NOT NULL,
    n_components       INTEGER NOT NULL,
    explained_variance DOUBLE NOT NULL,
    fitted_at          TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS selected_subset (
    source_id       VARCHAR PRIMARY KEY,
    cluster_key     VARCHAR NOT NULL,
    selection_rank  INTEGER NOT NULL,   -- 1 = first picked by the greedy maximiser (a row swapped in takes the rank of the row it replaced)
    marginal_gain   DOUBLE              -- NULL when the cluster was kept whole; a swapped-in row: the objective's rise
);

CREATE TABLE IF NOT EXISTS merge_pairs (
    group_id     VARCHAR NOT NULL,
    cluster_key  VARCHAR NOT NULL,
    source_id    VARCHAR NOT NULL,
    member_index INTEGER NOT NULL,
    similarity   DOUBLE NOT NULL,       -- mean cosine similarity to the other members
    PRIMARY KEY (group_id, source_id)
);

-- Which cluster membership each per-cluster asset partition was last computed from: partitions
-- whose membership moved are rerun by the stale-clusters sensor.
CREATE TABLE IF NOT EXISTS partition_inputs (
    asset_name     VARCHAR NOT NULL,
    cluster_key    VARCHAR NOT NULL,
    input_hash     VARCHAR NOT NULL,   -- the cluster membership_hash it was computed from
    run_id         VARCHAR,
    materialized_at TIMESTAMP NOT NULL,
    PRIMARY KEY (asset_name, cluster_key)
);

-- LLM answers keyed by a hash of (model, prompt version, sampling parameters, group contents).
CREATE TABLE IF NOT EXISTS llm_cache (
    cache_key         VARCHAR PRIMARY KEY,
    purpose           VARCHAR NOT NULL,   -- 'merge' or 'score'
    model             VARCHAR NOT NULL,
    prompt_version    VARCHAR NOT NULL,
    valid             BOOLEAN NOT NULL,
    response          VARCHAR NOT NULL,   -- the raw message content
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    created_at        TIMESTAMP NOT NULL
);

-- The merge gate's figures for a cached answer (its MiniLM similarities cost more than the
-- verdict): a cached answer is judged again, under any thresholds, without embedding anything.
CREATE TABLE IF NOT EXISTS gate_figures (
    cache_key       VARCHAR NOT NULL,   -- llm_cache.cache_key of the answer
    figures_version VARCHAR NOT NULL,   -- mergeit_core.merge.gate.FIGURES_VERSION
    figures         JSON NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (cache_key, figures_version)
);

CREATE TABLE IF NOT EXISTS merged_samples (
    group_id        VARCHAR PRIMARY KEY,
    cluster_key     VARCHAR NOT NULL,
    status          VARCHAR NOT NULL,    -- 'merged' | 'failed' | 'rejected' (merge gate) | 'rejected_by_quality'
    instruction     VARCHAR,
    input           VARCHAR,
    output          VARCHAR,
    model           VARCHAR NOT NULL,
    backend         VARCHAR NOT NULL,
    prompt_version  VARCHAR NOT NULL,
    sampling_params VARCHAR NOT NULL,    -- JSON
    quality_score   DOUBLE,
    sources_mean_score DOUBLE,
    error           VARCHAR,
    cache_key       VARCHAR NOT NULL,
    run_id          VARCHAR,
    partition_key   VARCHAR,
    created_at      TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS merged_dataset (
    sample_id    VARCHAR PRIMARY KEY,
    origin       VARCHAR NOT NULL,       -- 'merged' | 'selected'
    cluster_key  VARCHAR NOT NULL,
    group_id     VARCHAR,                -- set when origin = 'merged'
    instruction  VARCHAR NOT NULL,
    input        VARCHAR NOT NULL,
    output       VARCHAR NOT NULL,
    run_id       VARCHAR
);

-- Lineage edges: each final sample and the source rows (by content id) it was made from.
CREATE TABLE IF NOT EXISTS sample_sources (
    sample_id    VARCHAR NOT NULL,
    source_id    VARCHAR NOT NULL,
    PRIMARY KEY (sample_id, source_id)
);

-- Paths met in a source folder that are not read: 'skipped' (not a source format, not a regular
-- file) or 'ignored' (hidden, or named as still being written). Replaced by every ingest.
CREATE TABLE IF NOT EXISTS skipped_files (
    source_file  VARCHAR PRIMARY KEY,
    status       VARCHAR NOT NULL,     -- 'skipped' | 'ignored'
    reason       VARCHAR NOT NULL,
    ingested_at  TIMESTAMP NOT NULL
);

-- Rows placed at their nearest centroid since the last full fit: the rows a cluster's kept
-- selection lets in by swaps (mergeit_core.select.swap_in_rows).
ALTER TABLE topic_clusters ADD COLUMN IF NOT EXISTS placed_since_fit BOOLEAN DEFAULT false;
ALTER TABLE partition_inputs ADD COLUMN IF NOT EXISTS settings VARCHAR;  -- JSON: the settings the partition was computed with

ALTER TABLE llm_cache ADD COLUMN IF NOT EXISTS finish_reason VARCHAR;  -- 'stop', 'length', ...; NULL: unknown
-- The merge gate's verdict on each answer (NULL where no answer reached it or the gate was off):
-- status 'rejected' carries its reason; the figures are those bench/bench_merge_gate.py reports.
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_reason VARCHAR;
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_instruction_coverage DOUBLE[];  -- per member
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_output_coverage DOUBLE[];
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_instruction_lexical_coverage DOUBLE[];
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_output_lexical_coverage DOUBLE[];
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_copy_similarity DOUBLE;
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_output_copy_similarity DOUBLE;
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_input_coverage DOUBLE[];  -- per member; 1.0 without input
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_example_similarity DOUBLE;
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_repetition DOUBLE;
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_answer_margin DOUBLE;
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_output_ratio DOUBLE;
ALTER TABLE merged_samples ADD COLUMN IF NOT EXISTS gate_instruction_is_task DOUBLE;  -- 1.0: the instruction asks
-- The last run of the whole graph that left nothing to retry: what it read (source file hashes),
-- with which settings, and the database it left. A rerun whose inputs and database still match
-- has nothing to do. One row at most.
CREATE TABLE IF NOT EXISTS complete_runs (
    run_id          VARCHAR NOT NULL,   -- the Dagster run that built merged_dataset
    sources_hash    VARCHAR NOT NULL,
    settings_hash   VARCHAR NOT NULL,
    database_stamp  VARCHAR NOT NULL,
    finished_at     TIMESTAMP NOT NULL,
    invocation_hash VARCHAR             -- what `mergeit run` was asked, as given (flags, variables, code)
);
ALTER TABLE complete_runs ADD COLUMN IF NOT EXISTS invocation_hash VARCHAR;
