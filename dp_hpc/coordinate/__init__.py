"""Driving a sweep: the sweep loop (sweep.py) and the generator stage (generators.py) above one
coordinator per run (coordinator.py: carries out what plan.py, a pure function, decides; state/: the
run's state, its job table and its files; branch.py), submitting every job record-then-submit
(records.py) through a runner (runners/: local or SLURM). config.py holds the method, pool and SLURM configuration."""
