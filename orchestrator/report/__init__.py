"""Reporting: the paper's statistic, tables, plots and the tuning ranking, from Parquet only.

Imports neither ray nor torch nor the execute layer, so reports run anywhere, at any time.
"""
