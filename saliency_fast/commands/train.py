"""`saliency-fast train METHOD`: train a CNN with one of ``sf.train.OBJECTIVES`` (scaat, sgt,
pgdat, trades, plain, res-g, res-l, gradia, haics, and any method registered there) on the
embedded digits or on user data; writes the checkpoint, the JSON-lines log, the final weights
and a figure of |gradient| maps before and after training."""
from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

if TYPE_CHECKING:  # the CLI imports the training package only when it trains
    from ..train.objectives import TrainingMethod

# flags shared by several methods: CLI name → keyword argument
METHOD_FLAGS = {
    "epsilon": float, "steps": int, "step_size": float, "budget": str, "rho": float, "k": float, "gamma": float,
    "lam": float, "beta": float, "attack_loss": str, "warmup_epochs": int, "ramp_epochs": int, "fill": str,
    "eta": float, "weight": float, "form": str, "layer": str, "reg": float,
}
METHOD_SUMMARIES = {
    "plain": "cross-entropy on the clean images",
    "sgt": "Saliency Guided Training (Ismail et al. 2021): mask low-|gradient| pixels, match the clean prediction",
    "scaat": "SCAAT (Xu et al. 2023): adversarial training with the budget on low-saliency pixels",
    "pgdat": "PGD adversarial training (Madry et al. 2018), uniform budget",
    "trades": "TRADES (Zhang et al. 2019): clean CE + β·KL to the adversarial prediction",
    "res-g": "RES-G (Gao et al. 2022): Grad-CAM supervised by masks, target a Gaussian blur of Grad-CAM (needs masks)",
    "res-l": "RES-L (Gao et al. 2022): Grad-CAM supervised by masks, target a learnable projection of them (needs masks)",
    "gradia": "GRADIA (Gao et al. 2022): L1 between masks and Grad-CAM (needs masks)",
    "haics": "HAICS (Shen et al. 2021): BCE between masks and Grad-CAM (needs masks)",
}
# the help text of each flag (the methods that take it in brackets)
METHOD_FLAG_HELP = {
    "epsilon": "attack budget ε per pixel, in input units (scaat, pgdat, trades; default 8/255, digits preset 0.3)",
    "steps": "PGD attack steps (scaat, pgdat, trades; default 5, digits preset 3)",
    "step_size": "PGD step size (scaat, pgdat, trades; default 2.5·ε/steps)",
    "budget": "how the attack budget follows saliency: 'mass', 'topk', 'inverse' or 'uniform' (scaat; default 'mass')",
    "rho": "budget 'mass': the low-saliency pixels holding this share of the mass get ε (scaat; default 0.1)",
    "k": "the bottom-k fraction of pixels by saliency: masked (sgt) or given ε with budget 'topk' (scaat); default 0.5",
    "gamma": "budget 'inverse': e = ε·(1 − saliency percentile)^γ (scaat; default 1.0)",
    "lam": "weight of the KL term (scaat, sgt; default 1.0)",
    "beta": "weight of the adversarial term (trades; default 6.0)",
    "attack_loss": "what the attack maximises: 'kl' or 'ce' (scaat; default 'kl')",
    "warmup_epochs": "epochs of plain training before the attack starts (scaat default 2; pgdat, trades 0)",
    "ramp_epochs": "epochs over which ε ramps up after the warm-up (scaat default: 10%% of the epochs)",
    "fill": "what replaces the masked pixels: 'random' (uniform in the image's range) or 'zeros' (sgt)",
    "eta": "margin η of the alignment loss, relu(L_align − η) (res-g, res-l; default 0.1)",
    "weight": "weight of the explanation loss (res-g, res-l, gradia, haics; default 1.0)",
    "form": "HAICS loss form (haics; default 'masked')",
    "layer": "the Grad-CAM layer the explanation loss reads (res-g, res-l, gradia, haics; default: the last conv)",
    "reg": "pull of the learnable projection towards relu(Grad-CAM) (res-l; default 0.0)",
}
# explanation supervision (res.md): loaders yield (x, y, positive_mask, negative_mask, has_mask)
EXPLANATION_METHODS = ("res-g", "res-l", "gradia", "haics")


# tuned on the embedded digits (EXPERIMENTS.md, "SCAAT on digits"); flags override them
DIGITS_PRESET = {"epsilon": 0.3, "steps": 3}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..train import OBJECTIVES

    described = "\n".join(f"  {name:<7} {METHOD_SUMMARIES.get(name) or _summary(OBJECTIVES[name])}"
                          for name in sorted(OBJECTIVES))
    parser = subparsers.add_parser(
        "train", help=f"train a CNN with one of {', '.join(sorted(OBJECTIVES))}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a CNN with an explanation-improving method; writes last.pt, log.jsonl, model.pt\n"
                    "and gradient_maps.png (|gradient| maps before and after training) to --out.\n\n"
                    f"methods:\n{described}\n\nThe method options below apply to the methods named in brackets.")
    parser.add_argument("method", choices=sorted(OBJECTIVES), help="training method: " + ", ".join(sorted(OBJECTIVES)))
    parser.add_argument("--data", default="digits",
                        help="'digits' (embedded sklearn digits, 32×32) or an .npz with x_train, y_train "
                             "[, x_test, y_test]; x is (N, C, H, W) or (N, H, W) in [0, 1], H = W a multiple of 4")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    parser.add_argument("--out", default=None, help="output folder (default out/train-METHOD)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group("method options (passed to the method when it takes them)")
    for name, kind in METHOD_FLAGS.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                           help=METHOD_FLAG_HELP.get(name))
    masks = parser.add_argument_group("explanation supervision (res-g, res-l, gradia, haics)")
    masks.add_argument("--n-train", type=int, default=100, help="digits: training images (default 100)")
    masks.add_argument("--n-annotated", type=int, default=None, help="digits: how many carry masks (default all)")
    masks.add_argument("--jitter", type=int, default=0, help="digits: dilate/erode masks by up to this many pixels")
    masks.add_argument("--incompleteness", type=float, default=0.0, help="digits: share of each mask cut away")
    masks.add_argument("--decoy", action="store_true", help="digits: class-correlated decoy patches (negative masks)")
    masks.add_argument("--image-size", type=int, default=32, help="released-format data: resize images to this side")
    masks.add_argument("--channels", type=int, default=3, choices=(1, 3), help="released-format data: 1 or 3 channels")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other keyword of the method (a Python literal), e.g. --set gamma=2.0")
    parser.set_defaults(func=run)


def _summary(factory: Callable[..., Any]) -> str:
    """The first sentence of a method's docstring (partials: of the class they wrap)."""
    target = getattr(factory, "func", factory)
    line = (inspect.getdoc(target) or target.__name__).split("\n")[0]
    variant = getattr(factory, "keywords", {}).get("variant")
    return line.rstrip(".") + (f", variant {variant}" if variant else "")


def schedule_warnings(method: TrainingMethod, epochs: int) -> List[str]:
    """What to tell the user when a schedule (warm-up, ramp) does not fit in the run: the method
    would otherwise train plainly, or never reach its full strength, without a word."""
    if not hasattr(method, "warmup_epochs"):
        return []
    scheduled: Any = method  # AdversarialTraining or any objective with its warmup_epochs and ramp_epochs
    warmup = scheduled.warmup_epochs or 0
    ramp = scheduled.ramp_epochs if scheduled.ramp_epochs is not None else max(1, round(0.1 * epochs))
    if warmup >= epochs:
        return [f"warmup_epochs={warmup} but the run has {epochs} epoch(s): {args_name(method)} trains plainly "
                f"(no attack) for the whole run; use --epochs > {warmup} or --warmup-epochs 0"]
    if warmup + ramp > epochs:
        return [f"warmup_epochs={warmup} + ramp_epochs={ramp} exceed the run's {epochs} epoch(s): ε never reaches "
                f"--epsilon; use more --epochs or a shorter --ramp-epochs"]
    return []


def args_name(method: TrainingMethod) -> str:
    return getattr(method, "name", type(method).__name__)


def method_kwargs(factory: Callable[..., TrainingMethod], args: argparse.Namespace) -> Dict[str, Any]:
    """Keyword arguments for ``factory`` from the flags the user set (unknown ones are an error),
    on top of the digits preset when training on the embedded digits."""
    parameters = inspect.signature(factory).parameters
    chosen = {key: value for key, value in DIGITS_PRESET.items() if key in parameters} if args.data == "digits" else {}
    chosen.update({name: getattr(args, name) for name in METHOD_FLAGS if getattr(args, name) is not None})
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key = key.strip()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        chosen[key] = _typed(key, value, text, parameters.get(key))
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(key for key in chosen if key not in parameters and not takes_any)
    if unknown:
        accepted = ", ".join(parameters) or "no options"
        raise ValueError(f"method {args.method!r} does not take {', '.join(unknown)}; it takes {accepted}")
    return chosen


def _typed(key: str, value: Any, text: str, parameter: Optional[inspect.Parameter]) -> Any:
    """``value`` checked against the type of flag ``key`` or the parameter's default (a number
    given as text such as ``k=abc`` is refused here, not deep inside the method)."""
    kind = METHOD_FLAGS.get(key)
    default = parameter.default if parameter is not None else inspect.Parameter.empty
    if kind is None and isinstance(default, (bool, int, float)) and default is not None:
        kind = type(default)
    if kind is None or kind is str:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"--set {key}={text}: {key} must be True or False")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"--set {key}={text}: {key} must be a number ({kind.__name__})")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"--set {key}={text}: {key} must be a whole number")
    return kind(value)


def load_data(spec: str, batch_size: int, seed: int) -> Tuple[DataLoader, DataLoader, int, int, int]:
    """(train_loader, test_loader, channels, size, classes)."""
    if spec == "digits":
        from ..data import digits_loaders

        train_loader, test_loader = digits_loaders(batch_size=batch_size, shuffle_seed=seed)
        return train_loader, test_loader, 1, 32, 10
    if not os.path.exists(spec):
        raise FileNotFoundError(f"--data {spec!r} is neither 'digits' nor an existing .npz file")
    if os.path.isdir(spec) or not spec.endswith(".npz"):
        raise ValueError(f"--data {spec}: expected 'digits' or an .npz file with x_train, y_train [, x_test, y_test] "
                         "(np.savez(path, x_train=..., y_train=...))")
    try:
        with np.load(spec, allow_pickle=False) as arrays:
            split = {key: np.asarray(arrays[key]) for key in arrays.files}
    except Exception as error:  # a damaged zip, a text file renamed .npz, object arrays, …
        raise ValueError(f"--data {spec} cannot be read as an .npz of numeric arrays ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:150] if str(error) else ''})") from error
    missing = {"x_train", "y_train"} - set(split)
    if missing:
        raise ValueError(f"{spec} lacks the arrays {sorted(missing)} (it has {sorted(split)})")
    x_train = _images(split["x_train"], "x_train", spec)
    x_test = _images(split["x_test"], "x_test", spec) if "x_test" in split else x_train
    y_train = _labels(split["y_train"], "y_train", spec, len(x_train))
    y_test = _labels(split["y_test"], "y_test", spec, len(x_test)) if "y_test" in split else y_train
    channels, height, width = x_train.shape[1:]
    if height != width or height % 4:
        raise ValueError(f"images must be square with a side that is a multiple of 4, got {height}×{width}")
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=batch_size)
    return train_loader, test_loader, channels, height, int(max(y_train.max(), y_test.max())) + 1


def _images(array: np.ndarray, name: str, spec: str = "") -> torch.Tensor:
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{spec}: {name} has dtype {array.dtype}; images must be numbers in [0, 1]")
    images = torch.from_numpy(np.ascontiguousarray(array)).float()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"{spec}: {name} must have shape (N, C, H, W) or (N, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{spec}: {name} holds no images")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{spec}: {name} contains NaN or Inf values")
    if float(images.min()) < 0 or float(images.max()) > 1:
        raise ValueError(f"{spec}: {name} must hold values in [0, 1] (the attack clamps to that range)")
    return images.contiguous()


def _labels(array: np.ndarray, name: str, spec: str, count: int) -> torch.Tensor:
    """Class indices 0…K−1, one per image; float labels must be whole numbers (0.7 is not a class)."""
    array = array.reshape(-1)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not (array == np.round(array)).all():
            raise ValueError(f"{spec}: {name} holds non-integer values (e.g. {array[array != np.round(array)][:3]}); "
                             "labels must be class indices 0, 1, …")
    elif array.dtype.kind not in "iu":
        raise ValueError(f"{spec}: {name} has dtype {array.dtype}; labels must be integer class indices")
    if len(array) != count:
        raise ValueError(f"{spec}: {name} has {len(array)} labels for {count} images; they must match one to one")
    labels = torch.from_numpy(array.astype(np.int64))
    if bool((labels < 0).any()):
        raise ValueError(f"{spec}: {name} holds negative labels; labels must be class indices 0, 1, …")
    return labels


def gradient_maps(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    from ..methods.gradients import Saliency

    maps = Saliency(model, abs=True).attribute(images, labels)
    assert isinstance(maps, Tensor)  # the maps alone: no return_convergence_delta
    return maps


def run(args: argparse.Namespace) -> int:
    from ..models import DigitsCNN
    from ..train import OBJECTIVES, evaluate, fit
    from ..viz import heatmap_grid

    if args.epochs < 1 or args.batch_size < 1:
        raise ValueError("--epochs and --batch-size must be >= 1")
    from ._args import parse_device

    factory = OBJECTIVES[args.method]
    method = factory(**method_kwargs(factory, args))
    for message in schedule_warnings(method, args.epochs):
        print(f"saliency-fast train: warning: {message}", file=sys.stderr)
    device = parse_device(args.device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = args.out or os.path.join("out", f"train-{args.method}")
    explaining = args.method in EXPLANATION_METHODS
    if explaining:
        from ..data.res_format import explanation_loaders

        train_loader, test_loader, channels, size, classes = explanation_loaders(
            args.data, args.batch_size, args.seed, n_train=args.n_train, n_annotated=args.n_annotated,
            jitter=args.jitter, incompleteness=args.incompleteness, decoy=args.decoy,
            image_size=args.image_size, channels=args.channels)
    else:
        train_loader, test_loader, channels, size, classes = load_data(args.data, args.batch_size, args.seed)
    torch.manual_seed(args.seed)
    model = DigitsCNN(num_classes=classes, in_channels=channels, image_size=size).to(device)
    shown = next(iter(test_loader))
    images, labels = shown[0][:8].to(device), shown[1][:8].to(device)
    before = gradient_maps(model, images, labels)
    print(f"training {method!r} for {args.epochs} epochs on {args.data} ({device})")
    history = fit(model, method, train_loader, args.epochs, optimizer=torch.optim.Adam(list(model.parameters()) + list(method.parameters()), lr=args.lr),
                  val_loader=test_loader, checkpoint_dir=out, resume=not args.no_resume, device=device, amp=args.amp,
                  progress=not args.no_progress)
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))
    after = gradient_maps(model, images, labels)
    figure = heatmap_grid(images.cpu(), {"before training": before.cpu(), f"after {args.method}": after.cpu()},
                          os.path.join(out, "gradient_maps.png"), overlay=False,
                          titles=[f"label {int(y)}" for y in labels.cpu()],
                          title=f"|gradient| of the label's logit, before and after {args.method}",
                          note="brighter: the logit is more sensitive to the pixel; each map scaled by its own max")
    if explaining:
        from ..train.res_eval import evaluate_explanations
        from ..train.res_figures import save_overlay_figure

        overlays = save_overlay_figure(model, images, shown[2][:8], shown[3][:8], os.path.join(out, "gradcam_masks.png"),
                                       layer=getattr(method, "layer", None), labels=labels)
        report = evaluate_explanations(model, test_loader, getattr(method, "layer", None), device)
        print(json.dumps({"test_" + key: round(value, 4) for key, value in report.items()}))
        print(f"wrote {overlays}")
    final = evaluate(model, test_loader, device)
    print(json.dumps({"method": args.method, "epochs": len(history), "test_accuracy": round(final["accuracy"], 4),
                      "seconds_per_epoch": round(sum(history["time"]) / max(1, len(history)), 2)}))
    print(f"wrote {out}/last.pt, {out}/log.jsonl, {out}/model.pt, {figure}")
    return 0
