"""Data: tables read whole (``tables``: CSV or Parquet, checked, split, encoded) and Parquet read in
shards and record batches (``shards``), checked against the config at the boundary. No torch, no MLflow."""
