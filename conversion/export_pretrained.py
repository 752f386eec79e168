"""Export a pretraining checkpoint as a clean inference folder.

Same as the `bootleg-export` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
