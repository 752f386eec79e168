"""Frozen-encoder segmentation probes: kNN, Lin and Blk.

Same as the `bootleg-segment` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import segment_main

if __name__ == "__main__":
    sys.exit(segment_main())
