"""Pretrain Bootleg with BootlegTrainer from a recipe.

Same as the `bootleg-pretrain` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import pretrain_main

if __name__ == "__main__":
    sys.exit(pretrain_main())
