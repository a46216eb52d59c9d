"""baton's development tools: the sandbox cluster, the benchmarks, the profiler and the test
scaffolding they share. Not part of the images (see dev/pyproject.toml)."""
