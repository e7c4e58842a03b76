"""The names tables and figures give metrics, models and test settings: one vocabulary.

The missing-modality protocol (`callbacks/perturb.py`, docs/datasets.md) has three types:
`image` (the image is dropped), `text` (the text is dropped) and `both` (each dropped sample
loses its image or its text, half and half; never both). Reports call them "image missing",
"text missing" and "image or text missing"; the method's full model is "RLRT".
"""

from __future__ import annotations

METRIC_TITLES = {
    "f1_macro": "F1-macro",
    "f1_micro": "F1-micro",
    "f1_weighted": "F1-weighted",
    "f1_samples": "F1-samples",
    "acc": "accuracy",
    "cca_corr": "CCA correlation",
    "cca_corr_noise_floor": "CCA noise floor",
}
MODEL_TITLES = {"full": "RLRT", "rlrt": "RLRT"}  # the `full` variant is the method itself
MISSING_TITLES = {
    "image": "image missing",
    "text": "text missing",
    "both": "image or text missing",
}
NOISE_TITLES = {"image": "image noise", "text": "text noise"}


def metric_title(metric: str) -> str:
    """`f1_macro` -> "F1-macro"; an unknown metric keeps its name."""
    return METRIC_TITLES.get(metric, metric)


def model_title(model: str) -> str:
    """`full` -> "RLRT", `late_fusion` -> "late fusion"."""
    return MODEL_TITLES.get(model, str(model).replace("_", " "))


def kind_title(perturbation: str, kind: str) -> str:
    """What was done to the test samples: "image missing", "text noise", ..."""
    titles = MISSING_TITLES if perturbation == "missing" else NOISE_TITLES
    return titles.get(kind, f"{kind} {perturbation}")


def setting_title(perturbation: str, kind: str | None, amount: float) -> str:
    """One test setting: "complete", "70% image missing", "no text", "image noise 10"."""
    if amount == 0:
        return "complete"
    if perturbation == "missing":
        if amount == 1 and kind in ("image", "text"):
            return f"no {kind}"
        return f"{100 * amount:.0f}% {kind_title(perturbation, kind or 'both')}"
    return f"{kind_title(perturbation, kind or '')} {amount:g}"
