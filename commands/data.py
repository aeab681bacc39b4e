"""``xraydiff data summary``: every split of a DataModule loaded, counted and previewed."""

from __future__ import annotations

import csv
import io
import json

from commands.options import DataSummaryOptions
from xraydiff.data.imageio import atomic_directory, atomic_write_bytes, check_output_folder


def write_data_summary(datamodule, options: DataSummaryOptions) -> dict:
    """Set ``datamodule`` up and write OUT/summary.json, OUT/landmarks.csv (landmark data) and OUT/preview.png
    (``num_preview`` augmented training samples) in one atomic step; print and return the summary."""
    from xraydiff.data.preview import landmark_grid, mask_grid

    check_output_folder(options.out, options.overwrite, "data summary")
    datamodule.setup()
    summary = datamodule.summary()
    train = datamodule.dataset("train")
    previews = [train[k] for k in range(min(options.num_preview, len(train)))]
    inputs = [getattr(datamodule, "root", None)]
    with atomic_directory(options.out, overwrite=options.overwrite, command="data summary", inputs=inputs) as staging:
        atomic_write_bytes(staging / "summary.json", json.dumps(summary, indent=2).encode())
        if hasattr(datamodule, "landmark_rows"):
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["split", "id", "landmark", "x", "y", "mm_per_px"])
            for split, sample_id, k, x, y, mm in datamodule.landmark_rows():
                writer.writerow([split, sample_id, k, repr(x), repr(y), repr(mm)])
            atomic_write_bytes(staging / "landmarks.csv", buffer.getvalue().encode())
            if previews:
                landmark_grid(
                    previews, staging / "preview.png", title=f"{summary['anatomy']}: augmented training samples"
                )
        elif previews:
            mask_grid(previews, staging / "preview.png", title=f"{summary['anatomy']}: augmented training samples")
    print(json.dumps(summary, indent=2))
    print(f"wrote {options.out}/")
    return summary
