SELECT cluster_key, size FROM clusters ORDER BY cluster_key;
