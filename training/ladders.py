"""The paper's Table 3 as `bootleg-pretrain` commands (bootleg_hf/recipes/ladders/table3.yaml).

Same as the `bootleg-ladders` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import ladders_main

if __name__ == "__main__":
    sys.exit(ladders_main())
