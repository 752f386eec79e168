"""Build a Hub folder with a model card and upload it.

Same as the `bootleg-publish` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import publish_main

if __name__ == "__main__":
    sys.exit(publish_main())
