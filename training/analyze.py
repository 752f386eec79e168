"""Representational analysis of a Bootleg encoder.

Same as the `bootleg-analyze` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import analyze_main

if __name__ == "__main__":
    sys.exit(analyze_main())
