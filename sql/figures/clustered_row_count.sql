SELECT count(*) FROM topic_clusters;
