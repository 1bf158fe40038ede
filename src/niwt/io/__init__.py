"""File formats: atomic writes, Parquet schemas, JSON metrics."""
