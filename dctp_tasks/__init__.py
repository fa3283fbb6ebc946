"""DCTP's stage library: every stage's logic, importable and testable without a running Airflow."""

__version__ = "0.1.0"
