"""Search over a job's tables: units cut from the tables (units.py), the LanceDB index store (store.py),
and the one query function the CLI and the API share (query.py)."""
