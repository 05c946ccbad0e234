"""`saliency-fast explain`: one method on your model and images → maps (.pt) and a picture."""
from __future__ import annotations

import argparse
import os
import time

import torch

from ..methods.registry import METHOD_NAMES, make_method
from ..viz import heatmap_grid, is_signed
from ._args import (IMAGE_SIZE_HELP, MODEL_HELP, check_model_accepts, image_preparation, load_images, load_model,
                    parse_device, parse_options)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("explain", help="explain images with one method; write maps.pt and a PNG grid")
    parser.add_argument("--model", default="digits", help=MODEL_HELP)
    parser.add_argument("--weights", help="a state_dict file for the model (loaded with weights_only=True)")
    parser.add_argument("--image-size", type=int, metavar="N", help=IMAGE_SIZE_HELP)
    parser.add_argument("--images", help="a .pt/.npy file of (N, C, H, W) images or an image folder "
                        "(default: the first test digits; with --model mnist the first MNIST test digits)")
    parser.add_argument("--count", type=int, default=8, help="explain the first N images (default 8)")
    parser.add_argument("--method", default="samp++", choices=METHOD_NAMES, help="attribution method")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a method option")
    parser.add_argument("--target", type=int, help="class to explain (default: the predicted class)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="out/explain", help="output folder (default out/explain)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    device = parse_device(args.device)
    model = load_model(args.model, args.weights, args.image_size).to(device)
    images = load_images(args.images, args.model, args.count, *image_preparation(model, args.image_size)).to(device)
    check_model_accepts(model, tuple(images.shape[1:]), f"--images {args.images or 'digits'}", device)
    method = make_method(args.method, model, **parse_options(args.option))
    start = time.perf_counter()
    maps = method.attribute(images, target=args.target)
    assert isinstance(maps, torch.Tensor)  # no return_convergence_delta: the maps alone
    seconds = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad():
        predicted = model(images).argmax(1).cpu()
    torch.save({"maps": maps.cpu(), "predicted": predicted, "method": args.method}, os.path.join(args.out, "maps.pt"))
    titles = [f"predicted {int(p)}" for p in predicted]
    shown = maps.detach().cpu()
    explained = "the class given by --target" if args.target is not None else "the predicted class"
    note = ("red: supports " + explained + ", blue: opposes it" if is_signed(shown) else
            "brighter: more important for " + explained + " (the map has no sign)") + \
        "; each map is scaled by its own largest |value|"
    picture = heatmap_grid(images.cpu(), {args.method: shown}, os.path.join(args.out, "explain.png"), titles=titles,
                           title=f"{args.method} on {images.shape[0]} images", note=note)
    print(f"{args.method}: {images.shape[0]} images in {seconds:.2f} s → {args.out}/maps.pt, {picture}")
    return 0
