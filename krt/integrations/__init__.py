"""Adapters that let other frameworks speak through a krt server (optional extras)."""
