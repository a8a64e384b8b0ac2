"""Speed measurements: `python -m wsss.benchmarks.train` (the models), `python -m wsss.benchmarks.pipeline`
(the CAM stages on files), `python -m wsss.benchmarks.large_image` (a huge photo's class maps within the
pixel budget), `python -m wsss.benchmarks.random_walk`, `python -m wsss.benchmarks.interrupts`."""
