"""Load tests and benchmarks (not part of the unit-test run). See loadtests/README.md."""
