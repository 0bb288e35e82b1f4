"""Benchmarks: per-stage latency of our backends and of the systems a user would pick instead."""
