"""Inference workers: a Kafka consumer group that captions images in micro-batches."""
