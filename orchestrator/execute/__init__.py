"""Running: trials on Ray Tune through the shared trainer, recorded as they go.

The runner and trainable, the trial store, the Parquet recorder, the live view, the lock,
provenance and the decay-factor search loop.
"""
