"""Frozen-encoder classification probes with the paper's protocol.

Same as the `bootleg-probe` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import probe_main

if __name__ == "__main__":
    sys.exit(probe_main())
