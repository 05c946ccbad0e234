"""Dataset-scale attribution: ``attribute_dataset`` writes maps to shard files, ``load_attributions``
reads them back in dataset order.

Layout of ``out_dir``::

    manifest.json          what was computed (method and all its parameters, model and input
                           fingerprints, package version, storage dtype, shard index, skipped images)
    shard-000000.pt        one file per ``shard_size`` consecutive dataset indices: the maps of the
    shard-000001.pt        readable images, their dataset indices and explained classes, optional
    ...                    Deletion/Insertion AUCs, and the images of that range that were skipped

Why it is built this way:

- **Kill-safe.** Every file is written to a temporary sibling, flushed to disk and renamed into place
  (``os.replace`` is atomic), so a shard file either exists complete or not at all. A run killed at any
  moment (even ``kill -9``) loses at most the shards it was computing; ``resume=True`` (the default)
  skips every finished shard. Temporary files a killed run left are removed by the next run.
- **Checksummed.** Every shard carries a checksum of its content and the identity of the run that
  wrote it; the manifest records each shard's checksum. Resuming recomputes a shard that is damaged,
  truncated or from another run (with a warning naming it); ``load_attributions`` raises
  ``CorruptFileError`` naming the file, and validates the manifest's fields before trusting them.
- **One writer.** The run owns ``out_dir`` through a lock file (``.lock``: pid, host); a second run
  into the same folder raises ``FolderInUseError`` naming the owner. The lock of a killed run is
  taken over with a warning.
- **Attribution mode.** The model runs in eval mode with frozen parameters (a model passed in train
  mode is put back in train mode afterwards), so BatchNorm statistics never change and dropout never
  randomises the explained class.
- **Reproducible.** A shard is always cut into the same batches (consecutive readable images,
  ``batch_size`` at a time, counted from the shard's start), whoever computes it and whenever, so a
  resumed run and a ``torchrun`` run give the same maps as one uninterrupted process.
- **Refuses to mix runs.** The manifest records an identity (method + every parameter, model weights
  fingerprint, input fingerprint, shard size, storage dtype, AMP, evaluation); resuming into a folder
  whose identity differs raises a ``ValueError`` naming the fields that differ.
- **Multi-process.** Under ``torchrun`` (WORLD_SIZE > 1) the pending shards are dealt round-robin to the
  ranks (gloo on CPU, NCCL on CUDA); each rank writes its own shard files and rank 0 the manifest.
- **Memory-safe.** An out-of-memory error halves the batch (and the method's internal pass size) and
  retries, down to one image; the size that worked is kept for the rest of the run.
- **Bad input is reported, not fatal.** An image that cannot be read, has a different shape from the
  first readable image, or holds NaN/Inf is skipped with a warning naming its index and listed in the
  manifest; ``load_attributions`` returns NaN maps at those indices so dataset indices stay aligned.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_positive_int
from . import attribution_store as store
from ._common import BoundModel, Selector, attribution_mode, first_state_tensor
from ._distributed import ProcessGroup
from ._io import CorruptFileError, json_record, tensor_bytes
from ._lock import FolderInUseError, FolderLock
from .attribution_store import (FORMAT_VERSION, MANIFEST_NAME, SHARD_PATTERN, STORAGE_DTYPES,  # noqa: F401
                                AttributionSet, load_attributions)
from .data.sources import IMAGE_SUFFIXES, PreparedImages, Source, first_image, load_checked, open_source, prepare_image  # noqa: F401
from .methods import AttributionMethod
from .methods.registry import METHOD_NAMES, build_method, make_method, method_parameters, resolved_options

# The names importable from here before the registry, the sources and the store had modules of their
# own (make_method, prepare_image, load_attributions, ...) stay importable from here.
__all__ = ["attribute_dataset", "load_attributions", "make_method", "method_parameters", "AttributionSet",
           "PreparedImages", "prepare_image", "resolved_options",
           "METHOD_NAMES", "MANIFEST_NAME", "CorruptFileError", "FolderInUseError"]

# torch >= 2.5 names it torch.OutOfMemoryError; before, only the CUDA alias existed.
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


# ==============================================================================================
# the model and the run's identity
# ==============================================================================================
def check_model_accepts(model: nn.Module, shape: Tuple[int, ...], where: str,
                        device: Union[str, torch.device, None] = None) -> None:
    """One forward of a zero image of ``shape`` (C, H, W): refuse images the model cannot take,
    or a model that does not return (B, classes) logits, naming ``where`` the images come from."""
    parameter = first_state_tensor(model)
    device = device if device is not None else (parameter.device if parameter is not None else "cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    try:
        with attribution_mode(model), torch.no_grad():
            output = model(torch.zeros((1, *shape), device=device, dtype=dtype))
    except OutOfMemoryError:
        return  # not a shape problem: the run's own out-of-memory handling decides
    except RuntimeError as error:
        raise ValueError(f"the model cannot take the {'×'.join(map(str, shape))} (C×H×W) images of {where}: "
                         f"{str(error).strip().splitlines()[0][:200]}. Pass images of the size and channel count the "
                         "model was built for (the digits model takes 1×32×32)") from error
    if isinstance(output, torch.Tensor) and output.dim() != 2:
        raise ValueError(f"the model must return (B, classes) logits, but returned shape {tuple(output.shape)} "
                         "for a batch of 1")


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's class name and its state_dict (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


# ==============================================================================================
# processes and devices
# ==============================================================================================
def _amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where supported: its range keeps small input gradients from underflowing to zero."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class _RunModel(nn.Module):
    """The user's model under autocast and/or channels-last and/or torch.compile, with float32
    logits out, so every method sees an ordinary float32 classifier."""

    _call: Callable[[Tensor], Tensor]  # the model or its compiled form; set past nn.Module (not a submodule)

    def __init__(self, model: nn.Module, amp_dtype: Optional[torch.dtype], channels_last: bool, compiled: bool):
        super().__init__()
        self.model = model
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        object.__setattr__(self, "_call", torch.compile(model) if compiled else model)  # not a submodule

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return self._call(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
            logits = self._call(x)
        return logits.float()


# ==============================================================================================
# the run
# ==============================================================================================
def _passes_at_minimum(method: AttributionMethod) -> bool:
    """Whether the method's internal passes (its images per model call, shrunk together with the
    batch on OOM) are already one image, or it has none (it does not stream its work in passes)."""
    return not method.streams_passes or method.internal_batch_size == 1


def _set_pass_size(method: AttributionMethod, size: int) -> None:
    if method.streams_passes:
        method.internal_batch_size = size


class _Runner:
    """Computes the shards of one rank; holds the batch size that last fit in memory."""

    def __init__(self, method: AttributionMethod, run_model: nn.Module, device: torch.device, batch_size: int,
                 storage_dtype: torch.dtype, evaluate: bool, progress_bar: Any) -> None:
        self.method, self.run_model, self.device = method, run_model, device
        self.batch_size, self.storage_dtype, self.evaluate = batch_size, storage_dtype, evaluate
        self.eval_max_batch: Optional[int] = None
        self.progress_bar = progress_bar

    # -- one shard -------------------------------------------------------------------------
    def shard(self, source: Source, index: int, start: int, stop: int, shape: Tuple[int, ...]) -> dict:
        outputs: Dict[str, List[Tensor]] = {"maps": [], "targets": [], "deletion_auc": [], "insertion_auc": []}
        indices: List[int] = []
        skipped: List[List] = []
        pending: List[Tuple[int, Tensor]] = []
        items = self._valid_items(source, start, stop, shape, skipped)
        exhausted = False
        while True:
            while not exhausted and len(pending) < self.batch_size:
                item = next(items, None)
                exhausted = item is None
                if item is not None:
                    pending.append(item)
            if not pending:
                break
            chunk = pending[: self.batch_size]
            out_of_memory = None
            try:
                result = self._batch(torch.stack([image for _, image in chunk]))
            except OutOfMemoryError as error:
                out_of_memory = str(error)
            if out_of_memory is not None:  # outside the except block: the failed graph is released
                self._shrink(out_of_memory, len(chunk))
                continue
            for key, value in result.items():
                outputs[key].append(value)
            indices.extend(i for i, _ in chunk)
            pending = pending[len(chunk):]
            self.progress_bar.update(len(chunk))
        self.progress_bar.update(len(skipped))
        record = {"shard": index, "start": start, "stop": stop, "indices": torch.tensor(indices, dtype=torch.long),
                  "skipped": skipped, "batch_size": self.batch_size}
        for key, values in outputs.items():
            if values:
                record[key] = torch.cat(values)
        if not indices:  # an all-skipped shard still records empty tensors of the right kind
            record["maps"] = torch.empty((0,) + tuple(shape[1:]), dtype=self.storage_dtype)
            record["targets"] = torch.empty(0, dtype=torch.long)
        return record

    def _valid_items(self, source: Source, start: int, stop: int, shape: Tuple[int, ...],
                     skipped: List[List]) -> Iterator[Tuple[int, Tensor]]:
        for index in range(start, stop):
            image, reason = load_checked(source, index, shape)
            if image is None:
                name = source.name(index) if hasattr(source, "name") else None
                where = f"image {index}" + (f" ({name})" if name else "")
                warnings.warn(f"attribute_dataset: skipping {where}: {reason}", stacklevel=4)
                skipped.append([index, reason] + ([name] if name else []))
                continue
            yield index, image

    # -- one batch -------------------------------------------------------------------------
    def _batch(self, images: Tensor) -> Dict[str, Tensor]:
        x = images.to(self.device, non_blocking=True)
        with torch.no_grad():
            target = self.run_model(x).argmax(dim=1)
        attributed = self.method.attribute(x, target)
        assert isinstance(attributed, Tensor)  # no return_convergence_delta: the maps alone
        maps = attributed.detach()
        result = {"maps": maps.to(self.storage_dtype).cpu(), "targets": target.cpu()}
        if self.evaluate:
            from .metrics import deletion_insertion

            scores = deletion_insertion(self.run_model, x, maps.float(), target=target,
                                        max_batch=self.eval_max_batch, allow_constant=True)
            assert scores.deletion_auc is not None and scores.insertion_auc is not None  # both paths: the default
            result["deletion_auc"] = scores.deletion_auc.float().cpu()
            result["insertion_auc"] = scores.insertion_auc.float().cpu()
        return result

    def _shrink(self, error: str, attempted: int) -> None:
        """After an OOM: halve the batch, make the method's internal passes one batch copy, halve
        the evaluation's images per call. Raise when everything is already at one image."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        eval_at_minimum = not self.evaluate or self.eval_max_batch == 1
        if attempted == 1 and _passes_at_minimum(self.method) and eval_at_minimum:
            raise OutOfMemoryError(
                f"out of memory with a single image per model call ({error}); use a device with more memory, "
                "smaller images, or a smaller model")
        self.batch_size = max(1, attempted // 2)
        _set_pass_size(self.method, self.batch_size)
        if self.evaluate:
            current = self.eval_max_batch or (1 << 22)
            self.eval_max_batch = max(1, current // 2)
        warnings.warn(f"attribute_dataset: out of memory with {attempted} images; retrying with "
                      f"batch_size={self.batch_size}", stacklevel=4)



def attribute_dataset(
    model: nn.Module,
    data: Any,
    method: Union[str, AttributionMethod],
    out_dir: Union[str, os.PathLike],
    batch_size: int = 64,
    shard_size: int = 1024,
    resume: bool = True,
    device: Union[str, torch.device, None] = None,
    amp: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    evaluate: bool = False,
    *,
    method_options: Optional[Dict[str, Any]] = None,
    dtype: str = "float32",
    progress: bool = True,
    output: Selector = None,
) -> dict:
    """Attribute every image of ``data`` with ``method`` and store the maps in ``out_dir``.

    Args:
        model: a classifier (B, C, H, W) → (B, classes); moved to ``device``. The explained class of
            each image is the model's prediction (stored as ``targets``).
        data: a (N, C, H, W) or (N, H, W) tensor or NumPy array (uint8 is scaled to [0, 1]), a path
            to a .pt file (a tensor, an (images, labels) tuple or {"images": tensor}) or a .npy file
            (memory-mapped), a folder of images (recursive, sorted by relative path, decoded with
            Pillow: grayscale → 1 channel, else RGB, scaled to [0, 1]), or any map-style Dataset
            whose items are images or (image, label, ...) tuples.
        method: one of ``METHOD_NAMES``; ``method_options`` go to its constructor. Or an
            attribution method object built on ``model`` (e.g. ``sf.interop.from_captum(...)``); its
            ``config()`` (or repr) identifies it for resume, and amp/channels_last/compile are refused.
        out_dir: output folder (created). See the module docstring for its layout.
        batch_size: images per attribution call (reduced automatically on out-of-memory).
        shard_size: images per shard file: the unit of resumption and of work between processes.
        resume: skip the shards already in ``out_dir`` (refusing a folder written by a different
            model, method, options or data); False deletes them and starts over.
        device: where to compute (default: the model's device; under torchrun with CUDA, the local GPU).
        amp: run the model's forward under autocast (bfloat16, or float16 on GPUs without bf16).
        channels_last: channels-last model and inputs (faster convolutions on GPUs).
        compile: ``torch.compile`` the model.
        evaluate: also store each image's Deletion and Insertion AUC (``sf.metrics.deletion_insertion``
            with its defaults) in the shards.
        dtype: storage dtype of the maps, "float32" or "float16".
        progress: a tqdm bar (images/s, ETA) on rank 0.
        output: which part of the model's output holds the logits when it returns a tuple, dict or
            object (an index, a key such as "logits", or a callable), as in the methods.

    Returns:
        the manifest (also in ``out_dir/manifest.json``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    batch_size = check_positive_int(batch_size, "batch_size")
    shard_size = check_positive_int(shard_size, "shard_size")
    check_choice(dtype, "dtype", tuple(STORAGE_DTYPES))
    options = dict(method_options or {})
    if isinstance(method, str) or not hasattr(method, "attribute"):
        # Any: not a str nor a method object, it reaches method_parameters, which refuses it naming the choices
        method_name: Any = method.lower() if isinstance(method, str) else method
        parameters = method_parameters(method_name, model, **options)
    else:  # a method object: identified by its class and configuration
        if options or amp or channels_last or compile:
            raise ValueError("method_options, amp, channels_last and compile need a method name; a method object "
                             "runs as it was built")
        method_name = type(method).__qualname__
        parameters = json_record(method.config() if hasattr(method, "config") else repr(method))
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} is a file, not a folder; pass a folder (it is created if missing)")
    source = open_source(data)

    processes = ProcessGroup()
    try:
        with contextlib.ExitStack() as held:
            _own_folder(held, out_dir, f"attribute_dataset {method_name}", processes)
            held.enter_context(attribution_mode(model))  # eval, frozen parameters; the caller's modes restored
            return _attribute(model, source, method, method_name, output, options, parameters, out_dir, batch_size,
                              shard_size, resume, device, amp, channels_last, compile, evaluate, dtype, progress, processes)
    finally:
        if channels_last:  # give the caller's model back in its usual layout
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # stubs omit memory_format
        processes.close()


def _own_folder(stack: contextlib.ExitStack, out_dir: Path, purpose: str, processes: ProcessGroup) -> None:
    """Rank 0 takes the folder's lock; every rank raises if it could not."""
    refusal = None
    if processes.rank == 0:
        try:
            stack.enter_context(FolderLock(out_dir, purpose))
        except (FolderInUseError, OSError) as error:
            refusal = error
    if not processes.all_true(refusal is None):
        raise refusal if refusal is not None else FolderInUseError(f"rank 0 could not take the lock of {out_dir}")


def _attribute(model: nn.Module, source: Source, method: Union[str, AttributionMethod], method_name: str,
               output: Selector, options: Dict[str, Any], parameters: Any, out_dir: Path, batch_size: int,
               shard_size: int, resume: bool, device: Union[str, torch.device, None], amp: bool, channels_last: bool,
               compile: bool, evaluate: bool, dtype: str, progress: bool, processes: ProcessGroup) -> dict:
    device = processes.device(model, device)
    model.to(device)
    example = first_image(source)  # its shape is every image's; a CAM method finds its layer on it
    shape = tuple(example.shape)
    check_model_accepts(model, shape, f"the data ({source.description})", device)
    if isinstance(method, str):  # what the method would learn at its first call (a CAM layer), recorded
        options = resolved_options(method_name, model, options, example)
        parameters = method_parameters(method_name, model, **options)
    amp_dtype = _amp_dtype(device) if amp else None
    identity = {
        "method": method_name, "method_parameters": parameters,
        "model": {"class": type(model).__qualname__, "sha256": model_fingerprint(model)},
        "input": {"count": len(source), "shape": list(shape), "sha256": source.fingerprint()},
        "shard_size": shard_size, "dtype": dtype, "amp": str(amp_dtype).replace("torch.", "") if amp else False,
        "evaluate": bool(evaluate),
    }
    if output is not None:
        identity["output"] = output if isinstance(output, (int, str)) else \
            f"callable {getattr(output, '__qualname__', type(output).__name__)}"
    ranges = store.shard_ranges(len(source), shard_size)
    manifest = _prepare(out_dir, identity, resume, processes, source.description, ranges)
    pending = store.missing_shards(out_dir, ranges)
    processes.barrier()  # everyone has listed the finished shards before any new one appears
    mine = pending[processes.rank :: processes.world]

    if channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit memory_format
    selected = BoundModel(model, output)  # logits picked by output=, one row per image checked
    run_model = _RunModel(selected, amp_dtype, channels_last, compile) if (amp or channels_last or compile) else selected
    attribution = build_method(method_name, run_model, options, layers_of=model) if isinstance(method, str) else method
    from tqdm import tqdm

    todo = sum(ranges[i][1] - ranges[i][0] for i in mine)
    with tqdm(total=todo, unit="img", desc=f"{method_name} rank {processes.rank}/{processes.world}"
              if processes.active else method_name, disable=not progress or processes.rank != 0,
              dynamic_ncols=True) as bar:
        runner = _Runner(attribution, run_model, device, batch_size, STORAGE_DTYPES[dtype], evaluate, bar)
        for index in mine:
            start, stop = ranges[index]
            record = runner.shard(source, index, start, stop, shape)
            record["rank"] = processes.rank
            record["run"] = manifest["run"]
            store.write_shard(out_dir, index, record)
    processes.barrier()
    if processes.rank == 0:
        settings = {"device": str(device), "batch_size": batch_size, "final_batch_size_rank0": runner.batch_size,
                    "channels_last": bool(channels_last), "compile": bool(compile), "processes": processes.world}
        manifest = store.finish_run(out_dir, manifest, ranges, settings)
    processes.barrier()
    if processes.rank == 0:
        return manifest
    written = store.read_manifest(out_dir)
    assert written is not None  # rank 0 wrote it before the barrier
    return written


def _prepare(out_dir: Path, identity: dict, resume: bool, processes: ProcessGroup, source: str,
             ranges: List[Tuple[int, int]]) -> dict:
    """Check an existing manifest against this run (every rank, so all raise alike), then let rank 0
    clear or create the folder, drop damaged or foreign shards and write the manifest."""
    stray = store.check_resumable(out_dir, identity, resume)
    processes.barrier()  # all ranks have read the old manifest before rank 0 touches the folder
    manifest = store.new_manifest(identity, source)
    if processes.rank == 0:
        store.start_run(out_dir, manifest, ranges, stray, resume, stacklevel=4)
    processes.barrier()
    return manifest
