"""The HTTP front: publishes caption jobs to Kafka and answers with the reply."""
