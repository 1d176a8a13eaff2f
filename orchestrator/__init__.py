"""Grid submission to Ray Tune, the Parquet results store, and the paper's tables and plots.

Four layers, whose imports run one way (cli -> execute -> report -> plan, each also using
`layout`): plan reads experiments.yaml into trials, execute runs them on Ray and records
them, report turns the Parquet files into tables and plots, cli is the `onorm` command.
"""
