"""Statistics, sample masks and heat-maps of the masking samplers.

Same as the `bootleg-masks` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import masks_main

if __name__ == "__main__":
    sys.exit(masks_main())
