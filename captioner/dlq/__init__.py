"""`captioner dlq`: inspect the dead-letter topic and replay its records to their original topic."""
