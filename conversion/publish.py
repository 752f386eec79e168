"""Build a Hub folder from a Bootleg encoder / classification / segmentation folder and upload it.

    python conversion/publish.py runs/micro/encoder --repo-id me/bootleg-vit-micro --probe-results probe_results.json \
        --recipe training/recipes/vit-micro.yaml --dataset zalando-datasets/fashion_mnist [--private] [--revision v1]
    python conversion/publish.py ijepa-vith14 --repo-id me/ijepa-vith14-bootleg --license cc-by-nc-4.0 \
        --base-model facebook/ijepa_vith14_1k --converted --dry-run

The folder (default `<source>-hub`) gets `config.json` with `auto_map` for every Auto class, the modeling code those
need (so `trust_remote_code=True` works without bootleg-hf), safetensors weights only, the processor config and a
`README.md` model card (YAML metadata with `model-index` from the probe results) from `model_cards/bootleg.md`.
`--dry-run` stops after writing the folder. The token comes from `--token`, `HF_TOKEN` or `hf auth login`.
Exit status 0 only when the commit holds every file; any failure prints an error and exits with 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bootleg_hf.publishing import PublishError, RemoteCodeError, build_hub_folder, upload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder from save_pretrained (BootlegModel / …ForImageClassification / "
                                  "…ForSemanticSegmentation)")
    p.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    p.add_argument("--out", help="Hub folder to write (default: <source>-hub)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--dry-run", action="store_true", help="write the folder, do not upload")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", help="branch to commit to (created from main if missing)")
    p.add_argument("--commit-message")
    p.add_argument("--license", default="apache-2.0", help="e.g. cc-by-nc-4.0 for weights converted from Meta's")
    p.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    p.add_argument("--probe-results", action="append", default=[],
                   help="probe results JSON: training/probe.py's or see bootleg_hf.publishing.probe_rows (repeatable)")
    p.add_argument("--recipe", help="training recipe YAML to quote in the card")
    p.add_argument("--base-model", help="Hub id of the model these weights come from")
    p.add_argument("--converted", action="store_true",
                   help="the weights are --base-model's converted to Bootleg classes (e.g. I-JEPA), not trained with "
                        "Bootleg")
    p.add_argument("--model-name", help="card title and model-index name (default: the repo name)")
    args = p.parse_args(argv)

    out = Path(args.out or str(Path(args.source).resolve()) + "-hub")
    try:
        probe_results = [json.loads(Path(path).read_text()) for path in args.probe_results]
        recipe_text = Path(args.recipe).read_text() if args.recipe else None
        folder = build_hub_folder(args.source, out, args.repo_id, overwrite=args.overwrite, license=args.license,
                                  datasets=args.dataset, probe_results=probe_results, recipe_text=recipe_text,
                                  base_model=args.base_model, converted=args.converted,
                                  model_name=args.model_name)
        print(f"wrote {folder}: {', '.join(sorted(q.name for q in folder.iterdir()))}")
        if args.dry_run:
            print("dry run: nothing uploaded")
            return 0
        commit = upload(folder, args.repo_id, token=args.token, private=args.private, revision=args.revision,
                        commit_message=args.commit_message)
    except (PublishError, RemoteCodeError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"published {args.repo_id} at {commit.oid} ({commit.commit_url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
