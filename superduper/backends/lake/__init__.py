"""Folders of Parquet, CSV and Delta Lake tables, and in-memory DataFrames, as databases (``parquet://``)."""
