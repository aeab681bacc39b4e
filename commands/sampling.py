"""``xraydiff sample``: generate samples (image/heatmap pairs, or images) from a checkpoint into a folder, on one or
several devices."""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from lightning.fabric.utilities.rank_zero import _get_rank

from commands.progress import network_calls, step_progress
from xraydiff.data.imageio import check_output_folder
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
    if sampler_name == "ddpm" and steps is not None and steps != sampler_steps:
        raise DataError(
            None, f"--steps {steps}: the DDPM sampler always runs the full chain of T = {sampler_steps} steps "
            "(use --sampler ddim --steps K for fewer)",
        )  # fmt: skip
    return sampler_name, sampler_steps


def generate_samples(
    ckpt_path: Path,
    num_samples: int,
    out: Path,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    devices: int = 1,
    accelerator: str = "auto",
    precision: str = "32-true",
    overwrite: bool = False,
) -> Path:
    """Sample ``num_samples`` samples from the model in ``ckpt_path`` into ``out`` (see ``xraydiff sample``).

    All or nothing: samples are written into a staging folder beside ``out`` that replaces it at the
    end; on an error or SIGTERM/SIGINT the staging folder is removed and ``out`` is left as it was.
    """
    import lightning as L

    from callbacks.sample_writer import SampleWriter
    from datamodules.sampling import SampleIndexDataModule
    from lightning_modules.generative import GenerativeModule, load_model
    from xraydiff.checkpoints import class_path

    if num_samples < 1:
        raise DataError(None, f"--num_samples must be at least 1, got {num_samples}")
    if batch_size < 1:
        raise DataError(None, f"--batch_size must be at least 1, got {batch_size}")
    if devices < 1:
        raise DataError(None, f"--devices must be at least 1, got {devices}")
    out = Path(out)
    check_output_folder(out, overwrite, "sample", inputs=(ckpt_path,))
    model = load_model(ckpt_path, expected=GenerativeModule)
    sampler_name, sampler_steps = check_sampler_arguments(model, sampler, steps)
    resolved = resolve_precision(precision, accelerator)
    staging = out.with_name(f".{out.name}.partial")
    launcher = _get_rank() in (None, 0)  # DDP children re-run this command; only the launcher prepares folders
    manifest = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "model": class_path(model),
        "sampler": sampler_name,
        "steps": sampler_steps,
        "ddim_eta": model.hparams.get("ddim_eta") if sampler_name == "ddim" else None,
        "seed": seed,
        "count": num_samples,
        "batch_size": batch_size,
        "image_size": list(model.image_size),
        "channels": list(model.sample_channels),
        "devices": devices,
        "precision": resolved,
    }
    with interruptible():
        try:
            if launcher:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            # Our bar counts network calls (rate, time left); Lightning's counts batches, for the VAE's one pass
            # and under DDP, where each process runs its own share.
            calls = network_calls(num_samples, batch_size, sampler_steps) if devices == 1 else 0
            trainer = L.Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy="ddp" if devices > 1 else "auto",
                precision=resolved,
                logger=False,
                enable_checkpointing=False,
                use_distributed_sampler=False,
                callbacks=[SampleWriter(staging, out, manifest, num_samples)],
                default_root_dir=str(staging),
                enable_model_summary=False,
                enable_progress_bar=calls == 0,
            )
            datamodule = SampleIndexDataModule(num_samples, batch_size, seed, sampler, steps)
            with step_progress(calls, f"sample {sampler_name} {sampler_steps}"):
                trainer.predict(model, datamodule=datamodule, return_predictions=False)
        except BaseException:
            if launcher:
                shutil.rmtree(staging, ignore_errors=True)
            raise
    if launcher:
        print(f"xraydiff sample: wrote {num_samples} samples to {out}/ (manifest.json, <id>.npz, <id>.png)")
    return out
