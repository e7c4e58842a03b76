"""`rlrt bench --sizes paper`: refused without a GPU, every stage rehearsed with tiny shapes on
the CPU, and the pieces that compute something checked against independent counts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from data_modules.fakes.demo import write_demo_dataset
from rlrt.cli import main
from rlrt.commands.bench import run_bench
from rlrt.commands.bench_paper import (
    LLAMA_2_7B_SHAPE,
    PAPER,
    REHEARSAL,
    counted_flops,
    measure_paper,
    paper_markdown,
    verdict,
)
from rlrt.encoders import FrozenTextEncoder
from rlrt.tiny_encoders import write_llama_config, write_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without one")
def test_the_paper_size_is_refused_in_one_line_without_a_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--sizes", "tiny,paper", f"--output={tmp_path}"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "needs a CUDA GPU" in error and "--rehearse" in error
    assert list(tmp_path.iterdir()) == []  # refused before the tiny size spent its time


def test_an_unknown_size_and_a_rehearsal_of_no_paper_size_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "huge"])
    assert "unknown size 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--sizes", "tiny", "--rehearse"])
    assert "--rehearse applies to the paper size" in capsys.readouterr().err


def test_the_text_encoder_has_llama_2_7b_shapes(tmp_path):
    """The config written for the paper size is LLaMA-2-7B's: its parameter count from the
    architecture's own formula (embeddings, per block 4 attention and 3 MLP matrices and 2 norms,
    a final norm), and the encoder reads its depth and width without any weights."""
    from transformers import AutoModel, LlamaConfig

    folder = write_llama_config(tmp_path / "llama", LLAMA_2_7B_SHAPE)
    assert not [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]
    h, i, n, v = 4096, 11008, 32, 32000
    expected = v * h + n * (4 * h * h + 3 * h * i + 2 * h) + h
    with torch.device("meta"):
        model = AutoModel.from_config(LlamaConfig.from_pretrained(folder))
    assert sum(p.numel() for p in model.parameters()) == expected == 6_607_343_616
    encoder = FrozenTextEncoder(model_name_or_path=str(folder), random_weights=True, layers=4)
    assert (encoder.num_blocks, encoder.width, encoder.layer_indices[-1]) == (32, 4096, 31)
    assert not encoder.is_loaded


def test_paper_plots_fill_the_128_tokens(tmp_path):
    """Every plot of the paper size's data is at least 128 tokens long, so all are cut there."""
    root = tmp_path / "data"
    write_demo_dataset(root, num_movies=30, image_size=(30, 45), plot_words=PAPER.plot_words)
    tokenizer = write_word_tokenizer(tmp_path / "tokenizer")
    plots = [
        plot
        for record in (root / "dataset").glob("*.json")
        for plot in json.loads(record.read_text())["plot"]
    ]
    lengths = [len(tokenizer(plot)["input_ids"]) for plot in plots]
    assert len(plots) >= 30 and min(lengths) >= 128


def test_counted_flops_of_a_linear_layer():
    layer = torch.nn.Linear(32, 16, bias=False)
    x = torch.randn(8, 32)
    assert counted_flops(lambda: layer(x)) == 2 * 8 * 32 * 16


def test_verdict_states_how_far_from_the_target():
    assert verdict(21_000, 20_000) == "met"
    assert verdict(15_000, 20_000) == "missed by 25% of the target"
    assert verdict(0.05, 0.10, higher_is_better=False) == "met"
    assert verdict(0.12, 0.10, higher_is_better=False) == "missed by 20% of the target"


@pytest.mark.slow  # the whole rehearsal (make test-all, CI)
def test_the_rehearsal_runs_every_stage_and_reports_consistent_figures(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    output = tmp_path / "results"
    run_bench(
        ["--sizes=paper", "--rehearse", f"--configs={ROOT / 'configs'}", f"--output={output}"]
    )
    assert not (output / "bench_gpu.json").exists()  # a rehearsal never poses as the measurement
    r = json.loads((output / "bench_gpu_rehearsal.json").read_text())["paper"]
    assert r["rehearsal"] is True and r["samples"] == REHEARSAL.movies
    bare, build = r["bare_forward"], r["cache_build"]
    assert build["samples"] == r["samples"]  # every split in the one command
    assert build["ratio_to_bare_forward"] == pytest.approx(
        build["samples_per_s"] / bare["samples_per_s"]
    )
    assert bare["tflops"] == pytest.approx(bare["flops_per_sample"] * bare["samples_per_s"] / 1e12)
    assert bare["share_of_matmul_peak"] == pytest.approx(bare["tflops"] / r["matmul_peak_tflops"])
    assert bare["flops_per_sample"] > 0
    assert r["fit_cached"]["loads_weights"] is False
    cached = r["train_cached"]
    assert cached["samples"] == REHEARSAL.cached_samples
    assert cached["batch_size"] == REHEARSAL.cached_batch
    assert cached["samples_per_s"] == pytest.approx(cached["samples"] / cached["epoch_seconds"])
    assert 0 <= cached["data_wait_fraction"] < 1
    assert cached["in_device_memory"] is torch.cuda.is_available()  # auto: on a GPU only
    assert set(r["cca_linalg_ms"]) == ({"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"})
    assert r["cache_bytes_per_sample"] > 0 and r["trainable_params"] > 0
    markdown = (output / "bench_gpu_rehearsal.md").read_text()
    assert markdown == paper_markdown(json.loads((output / "bench_gpu_rehearsal.json").read_text()))
    assert "(rehearsal, tiny shapes)" in markdown and "- data wait < 10%" in markdown
    assert list(scratch.glob("rlrt-bench-*")) == []
    assert not (output / "bench_gpu_rehearsal.partial.json").exists()  # complete: removed


@pytest.mark.slow  # the whole rehearsal (make test-all, CI)
def test_a_failed_stage_is_recorded_and_the_others_still_measure(tmp_path, monkeypatch):
    """One GPU session must give all it can: the cache build failing leaves the stages that
    need the cache unmeasured and named with their errors, the others measured, the figures
    written after every stage, and a report that says which targets were not measured."""

    def no_cache(args):
        raise OSError("disk gone")

    monkeypatch.setattr("rlrt.commands.bench_paper.run_cache", no_cache)
    progress = tmp_path / "bench_gpu.partial.json"
    r = measure_paper(ROOT / "configs", rehearse=True, progress=progress)
    assert r["failed"]["cache_build"] == "OSError: disk gone"
    assert {"fit_cached", "train_cached"} <= set(r["failed"])  # they need the cache
    assert {"bare_forward", "train_online", "cca_linalg_ms"} <= set(r)
    assert "cache_build" not in r and "train_cached" not in r
    saved = json.loads(progress.read_text())
    assert saved["complete"] is False and saved["failed"] == r["failed"]
    markdown = paper_markdown({"machine": {}, "paper": r})
    assert "- training from the cache >= 20,000 samples/s: not measured" in markdown
    assert "- cache_build: OSError: disk gone" in markdown
    assert "| rlrt cache, all splits | - |" in re.sub(r" {2,}", " ", markdown)
