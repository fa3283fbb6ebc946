"""Airflow glue shared by DCTP's DAG files: run context → dt, config, storage, connections, failure handling.

Imported at task run time only (never at parse time) so DAG files stay fast to parse.
"""
