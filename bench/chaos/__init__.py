"""Failover proof: the service on a real replicated Kafka cluster under load, through broker and worker faults
(`make chaos`, `python -m bench.chaos`; see __main__.py)."""
