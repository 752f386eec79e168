"""Release a Bootleg checkpoint: pretrain, probe, export and publish (a dry run unless --push).

Same as the `bootleg-release` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import release_main

if __name__ == "__main__":
    sys.exit(release_main())
