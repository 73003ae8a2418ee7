"""Benchmarks: heavy runs kept out of the test suite. Each writes bench/results/<name>.json and a markdown table."""
