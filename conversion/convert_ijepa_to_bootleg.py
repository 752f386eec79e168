"""Convert an official I-JEPA checkpoint into a Bootleg folder.

Same as the `bootleg-convert-ijepa` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import convert_ijepa_main

if __name__ == "__main__":
    sys.exit(convert_ijepa_main())
