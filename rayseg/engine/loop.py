"""The one training loop every method runs on each Ray Train worker.

Ingest: each worker builds its own map-style ``Dataset`` and a ``DataLoader`` over a ``DistributedSampler``
shard (not Ray Data). The datasets are random-access (files or the synthetic generator), the joint transforms are
torchvision v2, and reseeding the sampler and augmentation RNG from (seed, epoch, rank) makes a resumed run
replay exactly the data an uninterrupted run would see; it also keeps every CPU of a small machine for the
training workers instead of sharing it with Ray Data tasks. (Ray Data is used where the input is a stream of
shards: the labeling pipeline.)
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from typing import TYPE_CHECKING

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from rayseg import storage
from rayseg.config import Config
from rayseg.data import build_segmentation_dataset, collate_skip_bad
from rayseg.engine.checkpoint import (LocalCheckpointStore, local_candidates, ray_candidates, restore_newest_intact,
                                      save_checkpoint)
from rayseg.engine.inference import infer
from rayseg.engine.metrics import ConfusionMatrix, confusion_matrix_png
from rayseg.engine.optim import build_optimizer, build_scheduler, parameter_groups
from rayseg.engine.previews import hyperparameters, preview_panels
from rayseg.engine.progress import RankZeroLogger, StepMeter
from rayseg.engine.run_folder import RunFolder
from rayseg.engine.tracking import MlflowTracker
from rayseg.ignore import IGNORE_INDEX
from rayseg.tables import format_duration

if TYPE_CHECKING:  # the engine is handed its method; it imports no method module
    from rayseg.methods.base import Method


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def _all_ranks_have_batch(has_batch: bool, device: torch.device, may_be_empty: bool) -> bool:
    """With ``data.skip_bad`` a batch can be empty on one rank; then every rank skips the step together.
    The check costs one tiny all-reduce per step, so it runs only when batches can be empty."""
    if not may_be_empty:
        if not has_batch:
            raise RuntimeError("an empty batch although data.skip_bad is off")
        return True
    if not _distributed():
        return has_batch
    flag = torch.tensor([0 if has_batch else 1], device=device)
    dist.all_reduce(flag)
    return int(flag) == 0


def _broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them at the start of
    each forward, but each rank then updates its own copy with its own batch; evaluation and export must all
    use the same model."""
    if _distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: Config, device: torch.device, rank: int, world: int) -> dict:
    """mIoU, per-class IoU, pixel accuracy and the confusion matrix on the val split; each rank scores a disjoint
    slice of images and the confusion matrices are summed across ranks. One image at a time (real datasets mix
    sizes and aspect ratios), inferred as the ``eval`` section says (:func:`rayseg.engine.inference.infer`)."""
    val_set = build_segmentation_dataset(cfg.data, train=False)
    shard = Subset(val_set, range(rank, len(val_set), world))
    loader = DataLoader(shard, batch_size=1, collate_fn=collate_skip_bad)
    cm = ConfusionMatrix(val_set.num_classes, IGNORE_INDEX, device=device)
    _broadcast_buffers(model)
    was_training = model.training
    model.eval()
    for batch in loader:
        if "image" not in batch:  # every sample of the batch was bad (data.skip_bad)
            continue
        image = batch["image"].to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                            enabled=cfg.train.amp and device.type == "cuda"):
            probs = infer(model, image, cfg.eval)
        cm.update(probs.argmax(1), batch["mask"].to(device))
    cm.all_reduce()
    model.train(was_training)
    return cm.compute(val_set.class_names)


def train_loop_per_worker(loop_config: dict) -> None:
    """``loop_config``: ``{"config": Config (checked on the driver), "method": Method class, "run_dir": location,
    "command": pretrain or finetune}``."""
    run = RunFolder(loop_config["run_dir"])
    try:
        _train(loop_config["config"], loop_config["method"], run, loop_config.get("command", "pretrain"))
    finally:
        run.close()


def _train(cfg: Config, method_cls: type[Method], run: RunFolder, command: str) -> None:
    local_mode = cfg.train.num_workers == 0
    # Ray Train logs an INFO line per report ("Reported metrics" / "Reporting training result"); keep the
    # console to rayseg's own progress lines. In a worker process that includes the root logger Ray configures.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if not local_mode:
        logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    if rank == 0:
        run.pull("log.txt")  # a resumed run appends to its log
    log = RankZeroLogger(rank == 0, str(run.local / "tensorboard"), run.local / "log.txt")
    torch.manual_seed(cfg.run.seed)  # identical initialisation on every rank

    train_set = method_cls.train_dataset(cfg)
    method = method_cls.from_config(cfg, train_set).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.train.sync_bn and world > 1:  # batch statistics over every worker's images, not each worker's own
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    # Built (and restored) after the move, so the optimizer state lives on the parameters' device.
    optimizer = build_optimizer(parameter_groups(method, cfg.optim), cfg.optim)

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.run.seed,
                                 drop_last=True)
    workers = cfg.data.loader_workers
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        num_workers=workers, collate_fn=collate_skip_bad, persistent_workers=workers > 0,
                        multiprocessing_context="forkserver" if workers > 0 else None,
                        pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ValueError(f"data: {len(train_set)} training images are fewer than one batch of "
                         f"{cfg.train.batch_size} per worker x {world} workers")
    total_steps = cfg.train.epochs * steps_per_epoch
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps, steps_per_epoch)

    store = None
    if local_mode:
        run.pull(LocalCheckpointStore.FOLDER)
        store = LocalCheckpointStore(run.local, cfg.train.keep_checkpoints)
    start_epoch, global_step = 0, 0
    ray_checkpoint = ray.train.get_checkpoint()
    candidates = (ray_candidates(ray_checkpoint) if ray_checkpoint is not None
                  else local_candidates(store.newest_first()) if store is not None else [])
    restored = restore_newest_intact(candidates, method, optimizer, scheduler, log.print)
    if restored is not None:
        start_epoch, global_step = restored[0] + 1, restored[1]
    if start_epoch >= cfg.train.epochs and run.has("summary.json"):
        log.print(f"[rayseg] {run.location} is already complete ({cfg.train.epochs} epochs); nothing to do",
                  to_log_file=False)  # a finished run's folder stays as it was
        log.close()
        return
    if start_epoch:
        log.print(f"[rayseg] resuming after epoch {start_epoch} (step {global_step}) from the last checkpoint")
    tracker = MlflowTracker(cfg, run.location, enabled=rank == 0)
    tracker.params(hyperparameters(cfg, command))

    model = ray.train.torch.prepare_model(
        method, move_to_device=False,
        parallel_strategy_kwargs={"find_unused_parameters": method_cls.find_unused_parameters})
    core = _unwrap(model)
    amp = cfg.train.amp and device.type == "cuda"
    meta = {"method": cfg.method, "config_fingerprint": cfg.fingerprint(), **core.export_meta()}

    skipped: dict[str, str] = {}
    last_losses: dict[str, float] = {}
    rates: list[float] = []
    metrics: dict = {}
    run_start = time.perf_counter()
    steps_done_this_run = 0
    for epoch in range(start_epoch, cfg.train.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.run.seed * 100_003 + epoch * 1_009 + rank)
        model.train()
        meter = StepMeter(world)
        for step, batch in enumerate(loader):
            if step >= steps_per_epoch:
                break
            skipped.update(batch.pop("skipped", []))
            if not _all_ranks_have_batch("image" in batch, device, may_be_empty=cfg.data.skip_bad):
                log.print(f"[rayseg] step {global_step}: a whole batch was bad samples; step skipped")
                continue
            batch = _to_device(batch, device, cfg.train.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                losses = model(batch)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            global_step += 1
            steps_done_this_run += 1
            core.on_step_end(global_step, total_steps)
            meter.add({"loss": loss, **(losses if len(losses) > 1 else {})}, batch["image"].shape[0])
            if global_step % cfg.train.log_every == 0 or step == steps_per_epoch - 1:
                means, rate = meter.flush()
                if not all(math.isfinite(v) for v in means.values()):
                    raise FloatingPointError(f"non-finite loss at step {global_step}: {means}")
                rates.append(rate)
                last_losses = means
                lr = optimizer.param_groups[0]["lr"]
                elapsed = time.perf_counter() - run_start
                eta = elapsed / steps_done_this_run * (total_steps - global_step)
                terms = " ".join(f"{k} {v:.4f}" for k, v in means.items())
                log.print(f"[rayseg] epoch {epoch + 1}/{cfg.train.epochs} step {step + 1}/{steps_per_epoch} "
                          f"{terms} lr {lr:.3g} {rate:.1f} img/s ETA {format_duration(eta)}")
                log.scalars({f"loss/{k}": v for k, v in means.items()}, global_step)
                log.scalars({"lr": lr, "images_per_s": rate}, global_step, prefix="train/")
                tracker.metrics({**{f"loss/{k}": v for k, v in means.items()}, "lr": lr}, global_step)

        last = epoch == cfg.train.epochs - 1
        report = {"epoch": epoch, "step": global_step, **{f"loss/{k}": v for k, v in last_losses.items()}}
        if core.evaluates and (last or (cfg.train.eval_every and (epoch + 1) % cfg.train.eval_every == 0)):
            metrics = evaluate(core.segmentation_model(), cfg, device, rank, world)
            if rank == 0:
                log.images("val/predictions", preview_panels(core.segmentation_model(), cfg, device), global_step)
            report["miou"] = metrics["miou"]
            log.print(f"[rayseg] epoch {epoch + 1}: mIoU {100 * metrics['miou']:.2f} "
                      f"pixel acc {100 * metrics['pixel_accuracy']:.2f}")
            log.scalars({"miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"]}, global_step,
                        prefix="val/")
            tracker.metrics({"val/miou": metrics["miou"], "val/pixel_accuracy": metrics["pixel_accuracy"]}, global_step)
            log.scalars({name: v for name, v in metrics["per_class_iou"].items() if v is not None}, global_step,
                        prefix="val_iou/")
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0 and (last or (epoch + 1) % cfg.train.checkpoint_every == 0):
                save_checkpoint(tmp, core, optimizer, scheduler, epoch, global_step, meta)
                if store is not None:
                    store.commit(tmp, epoch)
                    run.mirror(LocalCheckpointStore.FOLDER)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=checkpoint)
        if rank == 0:
            log.flush()
            run.push("tensorboard", "log.txt")

    if core.evaluates and not metrics:  # finished before, but killed before its outputs were written
        metrics = evaluate(core.segmentation_model(), cfg, device, rank, world)
    if _distributed():
        gathered: list[dict] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, skipped)
        for part in gathered:
            skipped.update(part)
    if rank == 0:
        _write_outputs(run, cfg, core, meta, metrics, skipped, last_losses, rates, global_step)
        final = {"hparam/loss": last_losses.get("loss", math.nan)}
        if "miou" in metrics:
            final["hparam/miou"] = metrics["miou"]
        log.hparams(hyperparameters(cfg, command), final)
        tracker.finish(run.local)
    log.close()  # flushes TensorBoard before the upload
    if rank == 0:
        run.push("tensorboard", "log.txt", "export", "metrics.json", "confusion_matrix.png", "bad_samples.txt",
                 "summary.json")  # summary last


def _write_outputs(run: RunFolder, cfg: Config, core, meta: dict, metrics: dict, skipped: dict[str, str],
                   last_losses: dict, rates: list[float], global_step: int) -> None:
    """Exports, metrics.json and summary.json of a finished run (rank 0)."""
    run_dir = run.local
    export = run_dir / "export"
    export.mkdir(parents=True, exist_ok=True)
    exported = {name: run.location_of(path) for name, path in core.export(export, meta).items()}
    if metrics:
        storage.write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        storage.write_bytes(run_dir / "confusion_matrix.png", confusion_matrix_png(metrics))
    if skipped:
        storage.write_text(run_dir / "bad_samples.txt", "".join(f"{k}\t{v}\n" for k, v in sorted(skipped.items())))
    summary = {
        "method": cfg.method, "epochs": cfg.train.epochs, "steps": global_step,
        "final_losses": last_losses,
        "images_per_s": sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else (rates[0] if rates else None),
        "skipped_bad_samples": len(skipped), "miou": metrics.get("miou"),
        "export": exported,
    }
    storage.write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
