"""Convert a timm VisionTransformer to a Bootleg encoder folder, or back.

Same as the `bootleg-convert-timm` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import convert_timm_main

if __name__ == "__main__":
    sys.exit(convert_timm_main())
