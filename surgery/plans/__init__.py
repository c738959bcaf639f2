"""Declarative surgery plans: the schema and the runner."""
