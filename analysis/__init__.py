"""analysis: reports, figures and the theory's toy model, from finished sweep folders."""

from dp_hpc.errors import quiet_ctrl_c_while_importing

quiet_ctrl_c_while_importing()  # `python -m analysis.<entry point>`: a Ctrl-C during its imports is one line
