"""The objective ablation: one encoder per objective, the same probes.

Same as the `bootleg-ablation` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import ablation_main

if __name__ == "__main__":
    sys.exit(ablation_main())
