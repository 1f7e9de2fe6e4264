"""dp_hpc: Deliberate Practice for synthetic data, from a laptop to a SLURM cluster."""

from dp_hpc.errors import quiet_ctrl_c_while_importing

quiet_ctrl_c_while_importing()  # `python -m dp_hpc.<entry point>`: a Ctrl-C during its imports is one line
