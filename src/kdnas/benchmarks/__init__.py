"""Benchmark harnesses over measured results (no training): replays of the real strategies against tables."""
