"""What the benchmark scripts share, so that no script imports another: timing loops (timing.py), the
machine a number came from (machine.py), one training run and its table row (runs.py), the serving
load clients (load.py) and the timed training step (train_steps.py). The scripts run from the
repository root as `python benchmarks/NAME.py`, which puts benchmarks/ on the path."""
