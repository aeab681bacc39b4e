"""``xraydiff sample``: generate samples (image/heatmap pairs, or images) from a checkpoint into a folder, on one or
several devices."""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from lightning.fabric.utilities.rank_zero import _get_rank

from commands.options import SampleOptions
from commands.progress import network_calls, step_progress
from xraydiff.data.imageio import check_output_folder
from xraydiff.diffusion import choices
from xraydiff.errors import DataError, Interrupted
from xraydiff.precision import resolve_precision


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into ``Interrupted`` inside the block, so that cleanup code runs.

    Lightning's own SIGTERM handler, installed later inside ``trainer.predict``, keeps this one
    and calls it after its own (it only raises a flag that prediction never reads).
    """

    def stop(signum, frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_sampler_arguments(model, sampler: str | None, steps: int | None) -> tuple[str, int | None]:
    """The (sampler, steps) a model will use; DataError for options that would be silently ignored."""
    if model.sampling_description(None, None)[0] == "prior" and (sampler is not None or steps is not None):
        raise DataError(None, f"--sampler/--steps: a {type(model).__name__} samples from its prior in one pass")
    sampler_name, sampler_steps = model.sampling_description(sampler, steps)
    full_chain = sampler_name in choices.REGISTRY and not choices.spec(sampler_name).grid
    if full_chain and steps is not None and steps != sampler_steps:
        raise DataError(
            None, f"--steps {steps}: {sampler_name} always runs the full chain of T = {sampler_steps} steps "
            f"(use --sampler {choices.DEFAULT_SAMPLER} --steps K for fewer)",
        )  # fmt: skip
    return sampler_name, sampler_steps


def generate_samples(options: SampleOptions) -> Path:
    """Sample ``num_samples`` samples from the model in ``ckpt_path`` into ``out`` (see ``xraydiff sample``).

    All or nothing: samples are written into a staging folder beside ``out`` that replaces it at the end; on an
    error or SIGTERM/SIGINT the staging folder is removed and ``out`` is left as it was.
    """
    import lightning as L

    from callbacks.sample_writer import SampleWriter
    from datamodules.sampling import SampleIndexDataModule
    from lightning_modules.generative import GenerativeModule, load_model
    from xraydiff.checkpoints import class_path

    for name in ("num_samples", "batch_size", "devices"):
        if getattr(options, name) < 1:
            raise DataError(None, f"--{name} must be at least 1, got {getattr(options, name)}")
    out = Path(options.out)
    check_output_folder(out, options.overwrite, "sample", inputs=(options.ckpt_path,))
    model = load_model(options.ckpt_path, expected=GenerativeModule)
    sampler_name, sampler_steps = check_sampler_arguments(model, options.sampler, options.steps)
    resolved = resolve_precision(options.precision, options.accelerator)
    staging = out.with_name(f".{out.name}.partial")
    launcher = _get_rank() in (None, 0)  # DDP children re-run this command; only the launcher prepares folders
    manifest = {
        "checkpoint": str(Path(options.ckpt_path).resolve()),
        "model": class_path(model),
        "anatomy": (model.train_data or {}).get("anatomy"),
        "sampler": sampler_name,
        "steps": sampler_steps,
        "ddim_eta": model.sampling.ddim_eta if choices.uses_eta(sampler_name) else None,
        "seed": options.seed,
        "count": options.num_samples,
        "batch_size": options.batch_size,
        "image_size": list(model.image_size),
        "channels": list(model.sample_channels),
        "devices": options.devices,
        "precision": resolved,
    }
    with interruptible():
        try:
            if launcher:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            # Our bar counts network calls (rate, time left); Lightning's counts batches, for the VAE's one pass
            # and under DDP, where each process runs its own share.
            one_process = options.devices == 1
            calls = network_calls(options.num_samples, options.batch_size, sampler_steps) if one_process else 0
            trainer = L.Trainer(
                accelerator=options.accelerator,
                devices=options.devices,
                strategy="ddp" if options.devices > 1 else "auto",
                precision=resolved,
                logger=False,
                enable_checkpointing=False,
                use_distributed_sampler=False,
                callbacks=[SampleWriter(staging, out, manifest, options.num_samples)],
                default_root_dir=str(staging),
                enable_model_summary=False,
                enable_progress_bar=calls == 0,
            )
            datamodule = SampleIndexDataModule(
                options.num_samples, options.batch_size, options.seed, options.sampler, options.steps
            )
            with step_progress(calls, f"sample {sampler_name} {sampler_steps}"):
                trainer.predict(model, datamodule=datamodule, return_predictions=False)
        except BaseException:
            if launcher:
                shutil.rmtree(staging, ignore_errors=True)
            raise
    if launcher:
        print(f"xraydiff sample: wrote {options.num_samples} samples to {out}/ (manifest.json, <id>.npz, <id>.png)")
    return out
