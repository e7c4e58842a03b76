"""`rlrt reproduce-table1`: RLRT on MM-IMDB, UPMC-Food101 and SNLI-VE, beside published results.

For each dataset: build the feature cache (the frozen encoders run once), fit with each seed,
test the best checkpoint with complete data and with 70% image missing / text missing / image
or text missing (half and half; protocol seed 0, the model's missing strategy), then write
`table1.md` and `table1.csv` into the output folder: our numbers as mean ± std over the seeds,
beside the published rows (`rlrt.reports.published`).
Every run is an ordinary `rlrt cache` / `fit` / `test` on the shipped configs.

Inputs come from environment variables (a `make` command line sets them: `make
reproduce-table1 MMIMDB_ROOT=... ...`) or the matching options:

    MMIMDB_ROOT      MM-IMDB folder (split.json + dataset/, or labels/ + images/)
    FOOD101_ROOT     UPMC-Food101 folder (images/ + texts/)
    SNLIVE_ROOT      SNLI-VE folder (snli_ve_*.jsonl + flickr30k_images/)
    CLIP_PRETRAINED  open_clip weights of ViT-L-14: a local checkpoint file, or a tag ("openai")
    TEXT_MODEL       local folder of the text model (LLaMA-2-7B in the paper: config.json,
                     tokenizer, weights)
    SEEDS            training seeds, comma-separated (default 0,1,2)
    TABLE1_DATASETS  subset to run, e.g. mmimdb,food101 (default: all three)
    SMOKE=1          fake copies of the three datasets and tiny encoders, all on the CPU in a few
                     minutes, same pipeline and same files (under results/smoke)

Everything is checked before any training: a missing variable, folder or dataset file is
reported in one message that says what to provide, and nothing runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from data_modules import fakes
from rlrt.commands.cache import run_cache
from rlrt.commands.fit_then_test import best_checkpoint
from rlrt.commands.robustness import Evaluator, Setting
from rlrt.engine.files import atomic_write_text
from rlrt.engine.lightning_cli import RLRTCLI, instantiate_group, parse_only
from rlrt.reports.names import setting_title
from rlrt.reports.published import PUBLISHED_NOTES, PUBLISHED_TABLE1, TABLE1_COLUMNS
from rlrt.reports.tables import markdown_table
from rlrt.tiny_encoders import tiny_encoder_args, write_tiny_llama, write_tiny_vit_config

MISSING_RATE = 0.7
PROTOCOL_SEED = 0
# Named as in every report (`rlrt.reports.names`): "70% image or text missing" is type `both`.
SETTINGS: dict[str, Setting] = {
    "complete data": Setting("missing", "both", 0.0, PROTOCOL_SEED),
    **{
        setting_title("missing", kind, MISSING_RATE): Setting(
            "missing", kind, MISSING_RATE, PROTOCOL_SEED
        )
        for kind in ("image", "text", "both")
    },
}


@dataclass(frozen=True)
class Table1Dataset:
    """One column group of Table 1: where its data comes from and what is measured."""

    key: str
    title: str
    variable: str
    needs: str  # what the variable must point to
    data_config: str  # under configs/data
    metrics: tuple[str, ...]  # test metric names, in table order
    fake_writer: Callable[..., Any]  # writes a fake copy into a root folder (smoke runs)
    fake_kwargs: dict[str, Any] = field(default_factory=dict)
    smoke_args: tuple[str, ...] = ()


DATASETS: tuple[Table1Dataset, ...] = (
    Table1Dataset(
        key="mmimdb",
        title="MM-IMDB",
        variable="MMIMDB_ROOT",
        needs="the MM-IMDB folder holding split.json and dataset/ (or labels/ + images/)",
        data_config="mmimdb.yaml",
        metrics=("f1_micro", "f1_macro"),
        fake_writer=fakes.write_fake_mmimdb,
        fake_kwargs={"dirty": False, "num_movies": 60},
    ),
    Table1Dataset(
        key="food101",
        title="Food101",
        variable="FOOD101_ROOT",
        needs="the UPMC-Food101 folder holding images/ and texts/",
        data_config="food101.yaml",
        metrics=("acc",),
        fake_writer=fakes.write_fake_food101,
        fake_kwargs={"dirty": False, "train_per_class": 10, "test_per_class": 4},
        smoke_args=("--data.init_args.val_size=0.25",),
    ),
    Table1Dataset(
        key="snli_ve",
        title="SNLI-VE",
        variable="SNLIVE_ROOT",
        needs="the SNLI-VE folder holding snli_ve_{train,dev,test}.jsonl and flickr30k_images/",
        data_config="snli_ve.yaml",
        metrics=("acc",),
        fake_writer=fakes.write_fake_snli_ve,
        fake_kwargs={"dirty": False, "images": (8, 3, 3)},
    ),
)

ENCODER_VARIABLES = {
    "CLIP_PRETRAINED": "the ViT-L-14 weights for open_clip: a local checkpoint file, or a "
    "pretrained tag such as openai (downloaded by open_clip unless cached)",
    "TEXT_MODEL": "the local folder of the text model (LLaMA-2-7B in the paper: config.json, "
    "tokenizer files, weights)",
}


def smoke_inputs(workdir: Path, datasets: list[Table1Dataset]) -> tuple[dict[str, Path], list[str]]:
    """Write fake datasets and tiny encoders under `workdir`; return roots and model arguments."""

    roots = {}
    for dataset in datasets:
        root = workdir / "data" / dataset.key
        if not root.exists():
            dataset.fake_writer(root, **dataset.fake_kwargs)
        roots[dataset.key] = root
    vit = write_tiny_vit_config(workdir / "encoders")
    llama = workdir / "encoders" / "llama"
    if not (llama / "config.json").is_file():
        write_tiny_llama(llama)
    model_args = [
        *tiny_encoder_args(vit, llama),
        "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0",
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
    ]
    return roots, model_args


def real_inputs(
    args: argparse.Namespace, datasets: list[Table1Dataset]
) -> tuple[dict[str, Path], list[str]]:
    """Check the variables and folders before anything runs; one message lists every problem."""
    problems = []
    roots = {}
    for dataset in datasets:
        value = getattr(args, dataset.key + "_root")
        if not value:
            problems.append(f"{dataset.variable} is not set: give {dataset.needs}")
        elif not Path(value).expanduser().is_dir():
            problems.append(f"{dataset.variable}={value} is not a folder: give {dataset.needs}")
        else:
            roots[dataset.key] = Path(value).expanduser()
    clip, text = args.clip_pretrained, args.text_model
    if not clip:
        problems.append(f"CLIP_PRETRAINED is not set: give {ENCODER_VARIABLES['CLIP_PRETRAINED']}")
    elif ("/" in clip or clip.endswith((".pt", ".bin", ".safetensors"))) and not Path(
        clip
    ).expanduser().is_file():
        problems.append(f"CLIP_PRETRAINED={clip} is not a file")
    if not text:
        problems.append(f"TEXT_MODEL is not set: give {ENCODER_VARIABLES['TEXT_MODEL']}")
    elif not (Path(text).expanduser() / "config.json").is_file():
        problems.append(
            f"TEXT_MODEL={text} holds no config.json: give {ENCODER_VARIABLES['TEXT_MODEL']}"
        )
    if problems:
        raise SystemExit(
            "rlrt reproduce-table1: nothing was run; provide:\n  - " + "\n  - ".join(problems)
        )
    model_args = [
        f"--model.image_encoder.init_args.pretrained={clip}",
        f"--model.text_encoder.init_args.model_name_or_path={text}",
    ]
    return roots, model_args


def check_datasets(run_args: dict[str, list[str]]) -> None:
    """Read every split of every dataset (the readers' own checks) before any training."""
    from lightning import LightningDataModule

    problems = []
    for key, args in run_args.items():
        try:
            datamodule = instantiate_group(parse_only(args), "data", LightningDataModule)
            datamodule.setup("fit")
            datamodule.setup("test")
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"{key}: {' '.join(str(err).split())}")
    if problems:
        raise SystemExit(
            "rlrt reproduce-table1: nothing was trained; the data is not usable:\n  - "
            + "\n  - ".join(problems)
        )


def run_dataset(
    dataset: Table1Dataset, args: list[str], seeds: list[int], workdir: Path
) -> list[dict[str, Any]]:
    """Cache, fit each seed, test the four settings; one row per (seed, setting, metric)."""

    cached = [*args, f"--data.init_args.feature_cache={workdir / 'cache' / dataset.key}"]
    run_cache(cached)
    rows = []
    for seed in seeds:
        seeded = [*cached, f"--seed_everything={seed}"]
        fit = RLRTCLI(args=["fit", *seeded])
        checkpoint = best_checkpoint(fit.trainer)
        evaluator = Evaluator(seeded, checkpoint, strategy=None, fraction=0.5)
        for setting_name, setting in SETTINGS.items():
            metrics = evaluator(setting)
            for metric in dataset.metrics:
                rows.append(
                    {
                        "dataset": dataset.key,
                        "setting": setting_name,
                        "metric": metric,
                        "seed": seed,
                        "value": metrics[f"test/{metric}"],
                        "missing_rate": setting.amount,
                        "missing_type": setting.kind if setting.amount else "",
                        "missing_strategy": evaluator.cli.model.missing_strategy,
                        "protocol_seed": setting.seed,
                        "checkpoint": checkpoint,
                    }
                )
    return rows


def our_rows(runs: pd.DataFrame, backbone: str) -> list[dict[str, str]]:
    """Table 1 rows (one per setting) in the published columns, values `mean ± std` in %."""
    rows = []
    for setting in SETTINGS:
        row = {"system": "RLRT (ours, this run)", "backbone": backbone, "setting": setting}
        for dataset in DATASETS:
            for metric in dataset.metrics:
                values = runs[
                    (runs["dataset"] == dataset.key)
                    & (runs["setting"] == setting)
                    & (runs["metric"] == metric)
                ]["value"]
                column = f"{dataset.key}_{metric}"
                if values.empty:
                    row[column] = ""
                elif len(values) == 1:
                    row[column] = f"{100 * values.mean():.1f}"
                else:
                    row[column] = f"{100 * values.mean():.1f} ± {100 * values.std():.1f}"
        rows.append(row)
    return rows


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """table1.csv: ours as mean / std / n per dataset, setting and metric, then published rows."""
    stats = (
        runs.groupby(["dataset", "setting", "metric"], sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    stats["std"] = stats["std"].fillna(0.0)
    stats.insert(0, "system", "RLRT (ours, this run)")
    published = []
    for values in PUBLISHED_TABLE1:
        entry = dict(zip(TABLE1_COLUMNS, values))
        for dataset in DATASETS:
            for metric in dataset.metrics:
                text = entry[f"{dataset.key}_{metric}"]
                if text:
                    published.append(
                        {
                            "system": entry["system"],
                            "dataset": dataset.key,
                            "setting": entry["setting"],
                            "metric": metric,
                            "mean": float(text.lstrip("~")) / 100,
                            "std": None,
                            "n": None,
                            "approximate": text.startswith("~"),
                            "backbone": entry["backbone"],
                        }
                    )
    return pd.concat([stats, pd.DataFrame(published)], ignore_index=True)


def markdown(runs: pd.DataFrame, backbone: str, seeds: list[int], extra: list[dict]) -> str:
    titles = {
        "mmimdb_f1_micro": "MM-IMDB F1-micro",
        "mmimdb_f1_macro": "MM-IMDB F1-macro",
        "food101_acc": "Food101 acc",
        "snli_ve_acc": "SNLI-VE acc",
    }
    published = [dict(zip(TABLE1_COLUMNS, values)) for values in PUBLISHED_TABLE1]
    rows = [
        [row.get(column, "") for column in ("system", "backbone", *titles, "setting")]
        for row in [*our_rows(runs, backbone), *extra, *published]
    ]
    table = markdown_table(rows, ["system", "backbone", *titles.values(), "setting"])
    return (
        "# Table 1: image-text classification, complete and missing modalities\n\n"
        f"Ours: mean ± std over training seeds {seeds} (%), each a fit on complete data tested "
        f"with complete data and with {MISSING_RATE:.0%} of the test samples missing a modality "
        f"(protocol seed {PROTOCOL_SEED}; image or text missing: half of them lose the image, "
        "half the text). "
        "Published rows as reported (~: read off a figure).\n\n" + table + f"\n{PUBLISHED_NOTES}\n"
    )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="rlrt reproduce-table1",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Other arguments (--trainer.*, --model.*, --data.*) go to every run.",
    )
    parser.add_argument("--smoke", action="store_true", default=_env_flag("SMOKE"))
    parser.add_argument("--mmimdb_root", default=env("MMIMDB_ROOT"))
    parser.add_argument("--food101_root", default=env("FOOD101_ROOT"))
    parser.add_argument("--snli_ve_root", default=env("SNLIVE_ROOT"))
    parser.add_argument("--clip_pretrained", default=env("CLIP_PRETRAINED"))
    parser.add_argument("--text_model", default=env("TEXT_MODEL"))
    parser.add_argument("--seeds", default=env("SEEDS"), help="default 0,1,2 (smoke: 0,1)")
    parser.add_argument("--datasets", default=env("TABLE1_DATASETS") or "mmimdb,food101,snli_ve")
    parser.add_argument("--configs", default="configs", help="folder of the shipped configs")
    parser.add_argument("--output", default=None, help="default results (smoke: results/smoke)")
    parser.add_argument("--workdir", default=None, help="default runs/table1 (smoke: ..._smoke)")
    parser.add_argument("--extra_rows", default=None, help="CSV of more rows (published columns)")
    return parser.parse_known_args(argv)


def run_reproduce_table1(argv: list[str]) -> pd.DataFrame:
    args, overrides = parse_args(argv)
    known = {d.key: d for d in DATASETS}
    wanted = [k for k in args.datasets.split(",") if k]
    unknown = [k for k in wanted if k not in known]
    if unknown or not wanted:
        raise SystemExit(f"rlrt reproduce-table1: datasets must be among {list(known)}: {wanted}")
    datasets = [known[k] for k in wanted]
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.smoke else "0,1,2")).split(",") if s]
    output = Path(args.output or ("results/smoke" if args.smoke else "results"))
    workdir = Path(args.workdir or ("runs/table1_smoke" if args.smoke else "runs/table1"))
    extra = []
    if args.extra_rows:
        extra = pd.read_csv(args.extra_rows, dtype=str).fillna("").to_dict("records")
    configs = Path(args.configs)
    if args.smoke:
        roots, model_args = smoke_inputs(workdir, datasets)
        trainer, model = "default.yaml", "demo.yaml"  # best by the task metric: any task
        backbone = "SMOKE: tiny random ViT + tiny LLaMA, fake data"
    else:
        roots, model_args = real_inputs(args, datasets)
        trainer, model = "default.yaml", "rlrt.yaml"
        backbone = "frozen CLIP ViT-L/14 + LLaMA (see configs/model/rlrt.yaml)"

    run_args = {}
    for dataset in datasets:
        logger = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(workdir / "runs"), "name": dataset.key},
        }
        run_args[dataset.key] = [
            *("--config", str(configs / "trainer" / trainer)),
            *("--config", str(configs / "data" / dataset.data_config)),
            *("--config", str(configs / "model" / model)),
            f"--data.init_args.root={roots[dataset.key]}",
            f"--trainer.logger={json.dumps(logger)}",
            *model_args,
            *(dataset.smoke_args if args.smoke else ()),
            *overrides,
        ]
    check_datasets(run_args)

    rows = []
    for dataset in datasets:
        print(f"\n=== reproduce-table1: {dataset.title}, seeds {seeds}", flush=True)
        rows += run_dataset(dataset, run_args[dataset.key], seeds, workdir)
    runs = pd.DataFrame(rows)
    buffer = io.StringIO()
    runs.to_csv(buffer, index=False)
    atomic_write_text(workdir / "table1_runs.csv", buffer.getvalue())
    buffer = io.StringIO()
    summary_table(runs).to_csv(buffer, index=False)
    atomic_write_text(output / "table1.csv", buffer.getvalue())
    text = markdown(runs, backbone, seeds, extra)
    atomic_write_text(output / "table1.md", text)
    print(f"\n{text}\nwrote {output / 'table1.md'} and {output / 'table1.csv'}")
    return runs
