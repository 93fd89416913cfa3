"""captioner: a Kafka event-driven image captioning service."""

__version__ = "0.1.0"
