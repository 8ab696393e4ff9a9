"""Benchmarks of training speed, memory and data preparation (tools/bench.py is the command line)."""
