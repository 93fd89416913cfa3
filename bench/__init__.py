"""`make bench`: naive in-process captioning vs the Kafka service, on this machine. See __main__.py."""
