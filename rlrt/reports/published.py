"""Published results printed beside ours by `rlrt reproduce-table1` (numbers from the cited papers
and repositories; values with `~` were read off a published figure, about +/- 0.5).

The RLRT paper reports its own Table 1 on the same three datasets; its numbers are not
reproduced here. Users who have them add rows with `--extra_rows FILE.csv` (same columns).
"""

from __future__ import annotations

TABLE1_COLUMNS = (
    "system",
    "backbone",
    "mmimdb_f1_micro",
    "mmimdb_f1_macro",
    "food101_acc",
    "snli_ve_acc",
    "setting",
)

# (system, backbone, MM-IMDB F1-micro, MM-IMDB F1-macro, Food101 acc, SNLI-VE acc, setting)
PUBLISHED_TABLE1: tuple[tuple[str, ...], ...] = (
    (
        "MMBT (Kiela et al. 2019)",
        "BERT + ResNet-152, fine-tuned",
        "66.8",
        "61.6",
        "92.1",
        "",
        "complete data; Food101 with web-page text",
    ),
    (
        "GMU (Arevalo et al. 2017)",
        "word2vec + VGG features",
        "63.0",
        "54.1",
        "",
        "",
        "complete data",
    ),
    ("BERT + InceptionV3 early fusion", "fine-tuned", "", "", "92.50", "", "complete data, titles"),
    ("EVE-Image (Xie et al. 2019)", "", "", "", "", "71.16", "complete data"),
    ("UNITER-L", "fine-tuned", "", "", "", "78.98", "complete data"),
    ("CLIP-TD", "CLIP distillation", "", "", "", "80.32", "complete data"),
    ("OFA", "fine-tuned, large", "", "", "", "91.2", "complete data"),
    ("ViLT baseline (frozen)", "ViLT-B/32", "", "~46.6", "~84.2", "", "complete data"),
    (
        "Missing-aware prompts (Lee et al. CVPR 2023)",
        "frozen ViLT-B/32",
        "",
        "~54.2",
        "~91.4",
        "",
        "complete data",
    ),
    (
        "Missing-aware prompts",
        "frozen ViLT-B/32",
        "",
        "42.66",
        "~79.1",
        "",
        "70% image or text missing",
    ),
    ("Missing-aware prompts", "frozen ViLT-B/32", "", "~46.3", "~86.1", "", "70% image missing"),
    ("Missing-aware prompts", "frozen ViLT-B/32", "", "~39.2", "~74.5", "", "70% text missing"),
    (
        "Frozen CLIP baseline (Hu et al. NeurIPS 2024)",
        "frozen CLIP ViT-B/16",
        "",
        "~56.3",
        "",
        "",
        "complete data",
    ),
    (
        "Deep correlated prompting (Hu et al. NeurIPS 2024)",
        "frozen CLIP ViT-B/16",
        "",
        "~61.6",
        "",
        "",
        "complete data",
    ),
    (
        "Deep correlated prompting",
        "frozen CLIP ViT-B/16",
        "",
        "~54.3",
        "",
        "",
        "70% image or text missing",
    ),
    (
        "Deep correlated prompting",
        "frozen CLIP ViT-B/16",
        "",
        "~57.1",
        "",
        "",
        "70% image missing",
    ),
    ("Deep correlated prompting", "frozen CLIP ViT-B/16", "", "~51.5", "", "", "70% text missing"),
)

PUBLISHED_NOTES = (
    "The missing-aware prompt code evaluates MM-IMDB per (movie, plot) pair; MMBT per movie with "
    "the longest plot. F1 is computed on sigmoid outputs thresholded at 0.5. The missing-aware "
    "prompt papers train and test at the same missing rate; our rows train on complete data and "
    "test at 70% missing."
)
