"""``sf.train.fit``: one training loop for every method (plain, SGT, PGD-AT, TRADES, SCAAT, RES…).

Per epoch: the method's schedule hook, one pass over the loader (method loss → backward →
optimiser step), optional validation, the scheduler step, then an atomic checkpoint and the
JSON-lines log. ``resume=True`` restores model, optimiser, scheduler, AMP scaler, method state,
history and every RNG state from the last checkpoint, so a killed run continues to the same
final weights as an uninterrupted one.

Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (gloo on
CPU, NCCL on CUDA). Every process iterates the same loader (same seed, same order) and trains
on its contiguous slice of each global batch; DDP averages the gradients, so with equal slices
and batch-mean losses the update equals the one-process update on the whole batch. If no
process group exists, ``fit`` creates one and destroys it when it returns (as
``attribute_dataset`` does); initialise the group yourself to keep it beyond ``fit``.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive_int
from .._distributed import ProcessGroup
from .._jsonable import jsonable
from . import checkpoint as ckpt
from .objectives import TrainingMethod


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or Inf; the message names the epoch and batch."""


class History(list[Dict[str, Any]]):
    """Per-epoch records (dicts: epoch, loss, accuracy, method terms, val_*, lr, time).

    ``history["loss"]`` is the column of one key over the epochs; ``history[-1]`` a record.
    """

    def __getitem__(self, key: Any) -> Any:  # a column (key: str) or what list gives
        if isinstance(key, str):
            return [record.get(key) for record in self]
        return super().__getitem__(key)


class _Distributed(ProcessGroup):
    """This process's place in a torchrun job (or a single process), with the collectives the
    training loop needs."""

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_min(self, value: Tensor) -> Tensor:
        if self.active:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return value

    def all_sum(self, value: Tensor) -> Tensor:
        if self.active:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def average_gradients(self, parameters: Iterable[Tensor]) -> None:
        """Average across processes the gradients DDP does not see (an objective's own parameters,
        e.g. RES-L's Φ). The one place they are averaged: objectives never reduce their own."""
        if not self.active:
            return
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
                parameter.grad /= self.world


def _to_device(batch: Any, device: torch.device) -> tuple:
    if isinstance(batch, Tensor):
        batch = (batch,)
    if isinstance(batch, dict):
        raise TypeError("loaders must yield tuples (x, y, ...), not dicts")
    return tuple(item.to(device, non_blocking=True) if isinstance(item, Tensor) else item for item in batch)


def _shard(batch: tuple, distributed: _Distributed) -> Optional[tuple]:
    """This process's contiguous slice of the global batch (None if the batch is too small to split)."""
    if not distributed.active:
        return batch
    size = batch[0].shape[0]
    if size < distributed.world:
        return None
    return tuple(item.tensor_split(distributed.world)[distributed.rank] if isinstance(item, Tensor) and item.dim() > 0
                 and item.shape[0] == size else item for item in batch)


def _loader_generators(loader: Iterable) -> List[torch.Generator]:
    """torch.Generators a DataLoader shuffles with, so their state goes into the checkpoint."""
    found: List[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: Optional[Union[str, torch.device]] = None) -> Dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode, restored afterwards) over ``loader``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    try:
        for batch in loader:
            x, y = _to_device(batch, device)[:2]
            logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
            count += x.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader is empty")
    return {"loss": float(loss_sum) / count, "accuracy": float(correct) / count}


class _Trainer:
    def __init__(self, model: nn.Module, method: TrainingMethod, loader: Iterable[Any], epochs: int,
                 optimizer: torch.optim.Optimizer, scheduler: Optional[Any], device: torch.device, amp: bool,
                 progress: bool, checkpoint_dir: Optional[Union[str, os.PathLike]], distributed: _Distributed) -> None:
        self.model, self.method, self.loader, self.epochs = model, method, loader, epochs
        self.optimizer, self.scheduler, self.device, self.amp = optimizer, scheduler, device, amp
        self.progress, self.distributed = progress, distributed
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.generators = _loader_generators(loader)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        self.history = History()
        self.wrapped: nn.Module = model
        self.config = run_config(method, optimizer, scheduler, amp)  # before resume changes anything
        if distributed.active:
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # -- checkpoints --------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.checkpoint_dir / ckpt.CHECKPOINT_NAME if self.checkpoint_dir is not None else None

    def state(self, epochs_done: int) -> dict:
        return {
            "format": ckpt.FORMAT_VERSION,
            "epoch": epochs_done,
            "method_name": self.method.name,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "history": list(self.history),
            "rng": ckpt.capture_rng(self.generators),
            "config": self.config,
        }

    def resume(self) -> int:
        """Load the last checkpoint if there is one; returns the number of epochs already done."""
        path = self.checkpoint_path
        if path is None or not path.exists():
            return 0
        try:
            state = ckpt.load_checkpoint(path, map_location=self.device)
        except ckpt.CorruptFileError as error:
            raise ckpt.CorruptFileError(f"{error}. Pass resume=False (CLI: --no-resume) to start over, or another "
                                        "checkpoint_dir") from error
        if state["method_name"] != self.method.name:
            raise ValueError(f"{path} was written by method {state['method_name']!r}, not {self.method.name!r}; "
                             "pass resume=False or another checkpoint_dir")
        differences = config_differences(state.get("config"), self.config)
        if differences:
            raise ValueError(
                f"{path} was trained with other settings; these differ: {'; '.join(differences)}. Resuming would "
                "silently continue with the saved ones: pass the same values, or resume=False (CLI: --no-resume) "
                "or another checkpoint_dir to start over")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(f"{path} holds weights of another model ({str(error).splitlines()[0]}); "
                             "pass resume=False or another checkpoint_dir") from error
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.history = History(state["history"])
        ckpt.restore_rng(state["rng"], self.generators)
        return int(state["epoch"])

    def clean_folder(self) -> None:
        """Remove the temporary files a killed run left (we hold the folder's lock)."""
        if self.checkpoint_dir is not None and self.distributed.main and self.checkpoint_dir.is_dir():
            ckpt.remove_stale_temporaries(self.checkpoint_dir, (ckpt.CHECKPOINT_NAME, ckpt.LOG_NAME))

    def save(self, epochs_done: int) -> None:
        if self.checkpoint_dir is not None and self.distributed.main:
            ckpt.save_checkpoint(self.checkpoint_dir / ckpt.CHECKPOINT_NAME, self.state(epochs_done))
            ckpt.write_log(self.checkpoint_dir / ckpt.LOG_NAME, list(self.history))
        self.distributed.barrier()

    # -- one epoch ----------------------------------------------------------------------------
    def diverged(self, loss: Tensor, epoch: int, batch_index: int) -> TrainingDiverged:
        kept = (f"the last good checkpoint ({len(self.history)} epochs) is kept at {self.checkpoint_path}"
                if self.checkpoint_path is not None and self.checkpoint_path.exists()
                else "no checkpoint was written")
        return TrainingDiverged(
            f"the training loss is {float(loss.detach())} (not finite) at epoch {epoch + 1} of {self.epochs}, "
            f"batch {batch_index + 1}; {kept}. Lower the learning rate or epsilon, or check the inputs for NaN/Inf."
        )

    def train_epoch(self, epoch: int) -> Dict[str, Optional[float]]:
        self.method.epoch_start(epoch, self.epochs)
        sums: Dict[str, Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64, device=self.device))
        batches: Any = self.loader  # or tqdm's progress bar over it (tqdm is untyped)
        if self.progress and self.distributed.main:
            from tqdm.auto import tqdm

            batches = tqdm(self.loader, desc=f"{self.method.name} epoch {epoch + 1}/{self.epochs}", leave=False)
        for batch_index, batch in enumerate(batches):
            batch = _shard(_to_device(batch, self.device), self.distributed)
            if batch is None:
                continue
            self.wrapped.train()
            with torch.autocast(self.device.type, enabled=self.amp,
                                dtype=torch.float16 if self.device.type == "cuda" else torch.bfloat16):
                output = self.method.loss(self.wrapped, batch, epoch)
            loss = output.loss
            finite = self.distributed.all_min(torch.isfinite(loss.detach()).to(torch.int32))
            if not bool(finite):
                raise self.diverged(loss, epoch, batch_index)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.distributed.average_gradients(self.method.parameters())
            self.scaler.step(self.optimizer)
            self.scaler.update()
            size = batch[0].shape[0]
            sums["count"] += size
            sums["loss"] += loss.detach().double() * size
            if output.logits is not None:
                sums["correct"] += (output.logits.detach().argmax(dim=1) == batch[1]).sum()
                sums["scored"] += size
            for name, value in output.terms.items():
                value = (value.detach().double() if isinstance(value, Tensor)
                         else torch.tensor(float(value), dtype=torch.float64, device=self.device))
                sums[f"term:{name}"] += value * size
            if batches is not self.loader and batch_index % 10 == 0:
                batches.set_postfix(loss=f"{float(loss):.4f}")
        names = sorted(sums)
        totals: Dict[str, float] = {}
        if names:
            totals = dict(zip(names, self.distributed.all_sum(torch.stack([sums[name] for name in names])).tolist()))
        count = totals.pop("count", 0.0)
        if count == 0:
            raise ValueError("the training loader yielded no batch")
        record: Dict[str, Optional[float]] = {"loss": totals.pop("loss") / count}
        scored = totals.pop("scored", 0.0)
        correct = totals.pop("correct", 0.0)
        record["accuracy"] = correct / scored if scored else None
        record.update({name[len("term:"):]: value / count for name, value in totals.items()})
        return record

    def run(self, start_epoch: int, val_loader: Optional[Iterable]) -> History:
        for epoch in range(start_epoch, self.epochs):
            started = time.perf_counter()
            record = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            record["time"] = time.perf_counter() - started
            if val_loader is not None:
                record.update({f"val_{key}": value for key, value in evaluate(self.model, val_loader, self.device).items()})
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            self.history.append(record)
            self.save(epoch + 1)
        return self.history


def fit(model: nn.Module, method: TrainingMethod, train_loader: Iterable, epochs: int,
        optimizer: Optional[torch.optim.Optimizer] = None, val_loader: Optional[Iterable] = None,
        checkpoint_dir: Optional[Union[str, os.PathLike]] = None, resume: bool = True,
        device: Optional[Union[str, torch.device]] = None, amp: bool = False, progress: bool = True,
        scheduler: Optional[Any] = None) -> History:
    """Train ``model`` with ``method`` for ``epochs`` epochs; returns the per-epoch :class:`History`.

    ``optimizer`` defaults to Adam (lr 1e-3) over the model's and the method's parameters;
    ``scheduler`` (optional) is stepped once per epoch. With ``checkpoint_dir`` every epoch ends
    with an atomic checkpoint (``last.pt``) and the JSON-lines log (``log.jsonl``); with
    ``resume=True`` an existing checkpoint is continued. ``amp`` runs the method under autocast
    (float16 with a gradient scaler on CUDA, bfloat16 on CPU). A NaN/Inf loss raises
    :class:`TrainingDiverged` naming the epoch and batch; the last good checkpoint is kept.
    """
    if not isinstance(method, TrainingMethod):
        raise TypeError(f"method must be a sf.train.TrainingMethod (e.g. sf.train.Plain()), got {type(method).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = check_positive_int(epochs, "epochs", minimum=0)
    distributed = _Distributed()
    try:
        return _train(model, method, train_loader, epochs, optimizer, val_loader, checkpoint_dir, resume, device, amp,
                      progress, scheduler, distributed)
    finally:
        distributed.close()  # the trainer, and its DDP wrapper, are gone with _train's frame


def _train(model: nn.Module, method: TrainingMethod, train_loader: Iterable[Any], epochs: int,
           optimizer: Optional[torch.optim.Optimizer], val_loader: Optional[Iterable[Any]],
           checkpoint_dir: Optional[Union[str, os.PathLike]], resume: bool, device: Optional[Union[str, torch.device]],
           amp: bool, progress: bool, scheduler: Optional[Any], distributed: _Distributed) -> History:
    device = distributed.device(model, device)
    model.to(device)
    method.to(device)
    if optimizer is None:
        optimizer = torch.optim.Adam(list(model.parameters()) + list(method.parameters()), lr=1e-3)
    trainer = _Trainer(model, method, train_loader, epochs, optimizer, scheduler, device, amp, progress,
                       checkpoint_dir, distributed)
    lock = (ckpt.FolderLock(checkpoint_dir, "training") if checkpoint_dir is not None and distributed.main
            else contextlib.nullcontext())
    with lock:
        trainer.clean_folder()
        start_epoch = trainer.resume() if resume else 0
        return trainer.run(start_epoch, val_loader)


def _config_leaf(value: Any) -> Any:
    """The run config's record of a hyper-parameter that is not plain data: a one-element tensor
    by its value, other tensors by shape and checksum, modules by repr, anything else by its
    type's name."""
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "checksum": ckpt.content_checksum(value)} if value.numel() != 1 \
            else float(value.detach())
    return repr(value) if isinstance(value, nn.Module) else type(value).__name__


def _plain(value: Any) -> Any:
    """A JSON-ready record of a hyper-parameter (see :func:`_config_leaf`)."""
    return jsonable(value, _config_leaf)


def run_config(method: TrainingMethod, optimizer: torch.optim.Optimizer, scheduler: Optional[Any],
               amp: bool) -> Dict[str, Any]:
    """The hyper-parameters a resumed run must share with the checkpoint: the method's
    ``config()``, the optimiser's class and per-group settings (lr, betas, weight decay…), the
    scheduler's class and AMP."""
    groups = [{key: _plain(value) for key, value in group.items() if key != "params"}
              for group in optimizer.param_groups]
    return {"method": _plain(method.config()), "optimizer": {"class": type(optimizer).__name__, "groups": groups},
            "scheduler": type(scheduler).__name__ if scheduler is not None else None, "amp": bool(amp)}


def config_differences(saved: Optional[Dict[str, Any]], current: Dict[str, Any]) -> List[str]:
    """'method.epsilon (saved 0.1, now 0.3)'-style lines for every leaf that differs (a checkpoint
    from before configs were recorded has nothing to compare)."""
    if saved is None:
        return []
    differences: List[str] = []

    def walk(old: Any, new: Any, where: str) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                walk(old.get(key), new.get(key), f"{where}.{key}" if where else key)
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            for index, (a, b) in enumerate(zip(old, new)):
                walk(a, b, f"{where}[{index}]")
        elif old != new:
            differences.append(f"{where} (saved {old!r}, now {new!r})")

    walk(saved, current, "")
    return differences
