"""``silo build-data``: rebuild the silo-tiny photo set from installed packages, checked against the manifest."""

from __future__ import annotations

import argparse

COMMAND = "build-data"
HELP = "write the silo-tiny training/held-out photos (PNG, native + 1/2 + 1/4) from installed packages"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="folder to write (e.g. runs/data)")
    parser.add_argument("--manifest", default=None, help="manifest JSON (default: the committed one)")
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        help="only photos from this source package (repeatable; default: all)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of installed files")
    parser.add_argument(
        "--update-manifest",
        action="store_true",
        help="maintainers: refresh checksums, sizes and versions in --manifest from the installed packages",
    )
    parser.add_argument(
        "--patches",
        type=int,
        default=0,
        help="also cut this many random training patches into DIR/patches-SIZE/ (fast to decode: the "
        "`silo train-operator --data` folder for silo-tiny operators; deterministic) [default: none]",
    )
    parser.add_argument("--patch-size", type=int, default=128, help="patch side in px")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patch positions")


def run(args: argparse.Namespace) -> int:
    from silo.data import photos
    from silo.errors import SiloError

    if args.update_manifest:
        if not args.manifest:
            raise SiloError("--update-manifest needs --manifest PATH (the file to rewrite)")
        photos.update_manifest(args.manifest)
    manifest = photos.load_manifest(args.manifest)
    out = photos.build_dataset(args.output_dir, manifest, args.source, verify=not args.no_verify)
    chosen = [p for p in photos.manifest_photos(manifest) if not args.source or p.source in args.source]
    n = {s: sum(p.split == s for p in chosen) for s in ("train", "heldout")}
    print(f"wrote {out}: {n['train']} training photos x {len(manifest['scales'])} scales, {n['heldout']} held out")
    if args.patches:
        folder = photos.write_patches(out, args.patches, args.patch_size, args.seed)
        print(f"wrote {folder}: {args.patches} training patches of {args.patch_size} px (seed {args.seed})")
    return 0
