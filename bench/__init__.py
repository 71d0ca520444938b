"""Benchmark harness: clerk-gateway side by side with the alternatives (`python -m bench.run`)."""
