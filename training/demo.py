"""The main job (make demo): pretrain, probe against random init, publish, reload.

Same as the `bootleg-demo` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import demo_main

if __name__ == "__main__":
    sys.exit(demo_main())
