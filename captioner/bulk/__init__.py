"""`captioner caption`: many images through the running pipeline, over its HTTP API or straight through
Kafka, with results written as they arrive."""
