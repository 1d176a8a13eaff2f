"""Grid submission to Ray Tune, the Parquet results store, and the paper's tables and plots."""
