"""Analyzers: each finds something out about a model and returns a Result."""
