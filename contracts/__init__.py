"""Shared contracts of corpusflow: job config, table schemas, stage contracts, storage and cost.

Everything else imports from here; this package imports nothing of the project's.
"""
