"""Fine-tune a Bootleg encoder (full, low-shot, LoRA or dense protocol) from a fine-tuning recipe.

Same as the `bootleg-finetune` console command of the installed package; `--help` lists the options.
"""

import sys

from bootleg_hf.cli import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main())
