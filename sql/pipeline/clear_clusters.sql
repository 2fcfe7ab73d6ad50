-- Clustering replaces the row-to-cluster map and the clusters (in one transaction).
DELETE FROM topic_clusters;
DELETE FROM clusters;
