"""CPU and GPU benchmarks (not part of `make test`): run from the repository root as `python -m bench.<script>`."""
