"""How the numbers in RESULTS.md were made: the protocol (reproduce), the search that chose the
world and the default (world_search), and the benchmarks (bench, bench_gpu). Run each from the
repository's root as `python -m experiments.<name>`; their tables and runs go to experiments/results/."""
