"""Durable storage: the LevelDB key schema and the group-commit path."""
