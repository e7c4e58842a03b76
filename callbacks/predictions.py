"""`PredictionWriter`: `rlrt predict` results as one row per input, with class names and scores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from rlrt.engine.files import atomic_write_text


def prediction_rows(
    outputs: list[dict[str, Any]], class_names: list[str], task: str, threshold: float
) -> list[dict[str, Any]]:
    """Rows `{"id", "labels", "scores": {class: score}, "image_present", "text_present"}`.

    `labels`: the classes scoring at least `threshold` (multi-label), or the top class.
    """
    rows = []
    for batch in outputs:
        scores = batch["scores"].float().cpu()  # (B, C)
        size = scores.shape[0]
        image = batch["image_present"].cpu().tolist()
        text = batch["text_present"].cpu().tolist()
        for row in range(size):
            values = scores[row].tolist()
            if task == "multilabel":
                labels = [n for n, v in zip(class_names, values) if v >= threshold]
            else:
                labels = [class_names[int(scores[row].argmax())]]
            rows.append(
                {
                    "id": str(batch["id"][row]),
                    "labels": labels,
                    "scores": {n: round(v, 6) for n, v in zip(class_names, values)},
                    "image_present": bool(image[row]),
                    "text_present": bool(text[row]),
                }
            )
    return rows


def to_jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def to_csv(rows: list[dict[str, Any]], class_names: list[str]) -> str:
    """Columns: id, labels (joined by `|`), image_present, text_present, error, one per class."""
    buffer = io.StringIO()
    fields = ["id", "labels", "image_present", "text_present", "error", *class_names]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                "id": r["id"],
                "labels": "|".join(r.get("labels", [])),
                "image_present": r.get("image_present", ""),
                "text_present": r.get("text_present", ""),
                "error": r.get("error", ""),
                **r.get("scores", {}),
            }
        )
    return buffer.getvalue()


# Output suffix (lower case) -> format.
OUTPUT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}
OUTPUT_OPTION = "--trainer.callbacks.init_args.output"
OVERWRITE_OPTION = "--trainer.callbacks.init_args.overwrite true"


class PredictionWriter(BasePredictionWriter):
    """Write every prediction of `rlrt predict` to one file, in input order.

    `.jsonl` (or `.json`) output: one object per input, `{"id", "labels", "scores": {class:
    score}, "image_present", "text_present"}`; `.csv`: the same flattened, one score column per
    class (suffixes in any case). Inputs the data module dropped as bad (`on_bad_sample="skip"`)
    follow as rows with an `error`. The file is written once, at the end, atomically. One device
    only.

    An existing output file is refused before any prediction runs, unless `overwrite`; the input
    file itself is always refused.

    Args:
        output: the file to write (`.jsonl`, `.json` or `.csv`).
        threshold: multi-label decision threshold on the sigmoid scores.
        overwrite: replace an existing `output` file.
    """

    def __init__(
        self,
        *,
        output: str = "predictions.jsonl",
        threshold: float = 0.5,
        overwrite: bool = False,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.output = Path(output).expanduser()
        self.format = OUTPUT_FORMATS.get(self.output.suffix.lower())
        if self.format is None:
            raise ValueError(
                f"prediction output {output!r} must end in .jsonl, .json or .csv (the suffix "
                f"decides the format); give another {OUTPUT_OPTION}"
            )
        self.threshold = threshold
        self.overwrite = overwrite

    def check_output(self, input_path: str | Path | None = None) -> None:
        """Raise (one line) when writing `output` would replace the input file or, without
        `overwrite`, an existing file."""
        if self.output.is_dir():
            raise IsADirectoryError(
                f"prediction output {self.output} is a directory; give a file as {OUTPUT_OPTION}"
            )
        if input_path is not None and _same_file(self.output, Path(input_path)):
            raise FileExistsError(
                f"prediction output {self.output} is the input file of the predictions; give "
                f"another {OUTPUT_OPTION}"
            )
        if self.output.exists() and not self.overwrite:
            raise FileExistsError(
                f"prediction output {self.output} already exists; give another {OUTPUT_OPTION} "
                f"or add {OVERWRITE_OPTION} to replace it"
            )

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":
            return
        if trainer.world_size > 1:
            raise ValueError("PredictionWriter writes one file from one device: use devices=1")
        self.check_output(_input_path(trainer.datamodule))

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders
            predictions = [batch for loader in predictions for batch in loader]
        class_names = pl_module.class_names or [str(i) for i in range(pl_module.num_classes)]
        rows = prediction_rows(predictions, class_names, pl_module.task, self.threshold)
        for bad in getattr(trainer.datamodule, "bad_samples", []):
            rows.append({"id": bad.id, "error": bad.reason})
        text = to_csv(rows, class_names) if self.format == "csv" else to_jsonl(rows)
        self.check_output(_input_path(trainer.datamodule))  # a file may have appeared meanwhile
        try:
            atomic_write_text(self.output, text, overwrite=self.overwrite)
        except FileExistsError:
            raise FileExistsError(
                f"prediction output {self.output} appeared while predicting; nothing was written "
                f"over it; give another {OUTPUT_OPTION} or add {OVERWRITE_OPTION}"
            ) from None
        print(f"wrote {len(rows)} predictions to {self.output}")


def _input_path(datamodule: object) -> Path | None:
    path = getattr(datamodule, "path", None)
    return Path(path) if isinstance(path, (str, Path)) else None


def _same_file(first: Path, second: Path) -> bool:
    try:
        return first.resolve() == second.resolve() or (
            first.exists() and second.exists() and first.samefile(second)
        )
    except OSError:
        return False
