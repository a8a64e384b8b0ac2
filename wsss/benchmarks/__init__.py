"""Speed measurements: `python -m wsss.benchmarks.random_walk`, `python -m wsss.benchmarks.train`."""
