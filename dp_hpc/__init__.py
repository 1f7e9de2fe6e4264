"""dp_hpc: Deliberate Practice for synthetic data, from a laptop to a SLURM cluster."""

import sys

if sys.argv[:1] == ["-m"]:  # `python -m dp_hpc.<entry point>`: a Ctrl-C during its imports is one line
    from dp_hpc.errors import quiet_ctrl_c_while_importing

    quiet_ctrl_c_while_importing()
