"""Vector searchers behind one interface: exact (numpy) and HNSW (hnswlib), chosen by name or automatically."""
