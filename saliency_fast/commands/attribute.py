"""`saliency-fast attribute`: attribution maps for a whole dataset, in resumable shards.

    saliency-fast attribute --model digits --data images/ --method ig --out maps/ [--evaluate]
    torchrun --nproc_per_node 2 -m saliency_fast attribute ...      # shards split across processes

``--model digits`` is the bundled digits CNN (``--weights`` replaces its bundled weights);
``--model torchvision:resnet50`` / ``--model timm:vit_small_patch16_224`` build those architectures
(random weights unless ``--weights``; the input normalisation runs inside the model, images stay in
[0, 1]; images are resized to ``--image-size``, default the model's own);
``--model package.module:factory`` calls ``factory()`` for an nn.Module and loads ``--weights``
(a state_dict, loaded with weights_only=True) into it. Rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Iterable

from ..attribution_store import STORAGE_DTYPES
from ..data.sources import PreparedImages
from ..dataset import attribute_dataset
from ..methods.registry import METHOD_NAMES
from ._args import IMAGE_SIZE_HELP, MODEL_HELP, image_preparation, load_model, parse_device, parse_options


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "attribute", help="attribute every image of a dataset; write resumable shards and a manifest",
        description="Attribute every image of a dataset (a .pt/.npy file or an image folder) and write the maps "
                    "as shard files plus manifest.json. Rerun the same command to resume after an interruption; "
                    "run it under torchrun to split the shards across processes.")
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument("--weights", help="a state_dict file for the model (loaded with weights_only=True)")
    parser.add_argument("--image-size", type=int, metavar="N", help=IMAGE_SIZE_HELP)
    parser.add_argument("--data", required=True, help="a .pt or .npy file of (N, C, H, W) images, or an image folder")
    parser.add_argument("--method", required=True, choices=METHOD_NAMES, help="attribution method")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option, VALUE parsed as JSON when it can be (e.g. --option n_steps=16); repeatable")
    parser.add_argument("--out", required=True, help="output folder (shards + manifest.json)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per attribution call (default 64; "
                        "reduced automatically on out-of-memory)")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard file (default 1024)")
    parser.add_argument("--dtype", choices=tuple(STORAGE_DTYPES), default="float32", help="storage dtype of the maps")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu, or the local GPU under torchrun)")
    parser.add_argument("--evaluate", action="store_true",
                        help="also store Deletion/Insertion AUCs per image (the SAMP paper's form: mean logit curve / the "
                             "image's logit, not bounded to [0, 1])")
    parser.add_argument("--amp", action="store_true", help="run the model under autocast (bfloat16/float16)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--no-resume", action="store_true", help="delete earlier results in --out and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.weights, args.image_size)
    side, channels = image_preparation(model, args.image_size)
    data = PreparedImages(args.data, side, channels) if side or channels else args.data
    manifest = attribute_dataset(
        model, data, args.method, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
        resume=not args.no_resume, device=parse_device(args.device), amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, evaluate=args.evaluate, method_options=parse_options(args.option), dtype=args.dtype,
        progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:  # one report under torchrun
        images = sum(shard["images"] for shard in manifest["shards"])
        print(f"{images} maps in {len(manifest['shards'])} shards under {args.out}; "
              f"{len(manifest['skipped'])} images skipped", file=sys.stderr)
        for entry in manifest["skipped"][:20]:
            print(f"  skipped {entry['index']}: {entry['reason']}", file=sys.stderr)
    return 0
