"""The LightningModule: frozen encoders -> MoLT -> (L_CCA, FBP -> fusion -> classifier).

For each of the `L_s` tapped layer pairs, MoLT maps both modalities into a common space of
width `common_dim` and gives `h_i, h_t (B, d_c)`; `L_CCA` correlates them; FBP turns them into
a robust representation `z_l (B, d_c / s)`; the fusion head combines the `z_l` with the
encoders' own embeddings into logits. Loss: `L_task + beta * L_CCA`.

`L_CCA` is computed on the samples that have both modalities (a dummy input's vector says
nothing about the pair), with covariances carried across steps over `cca_window` samples
(`RunningCCALoss`), and only while training. Validation and test report the held-out
alignment instead: `cca_corr`, out of sample: the canonical directions of `h_i`, `h_t` fitted
on the training epoch's features (`FitMoments`, kept in the checkpoint) and scored on the
whole split, the mean (top-k mean) correlation per layer pair (`cca_corr_layer{l}`) and
averaged, with `cca_corr_noise_floor` beside it (what independent noise of the same sizes
reaches, `rlrt.alignment.noise_floor`); `{stage}/loss` there is the task loss.

With `use_robust=False` and `beta=0` (the late-fusion, image-only and text-only baselines)
MoLT is not built and not run: nothing of the robust path is left without a gradient.

`RLRT` composes and calls: `rlrt.batch_features` (a batch's `Features`, online or cached, the
missing modalities replaced), `rlrt.modules.head` (the head built from the hyperparameters, the
robust path), `rlrt.cca_tracking` (the parts and the epoch log of `L_CCA` and `cca_corr`),
`rlrt.identity` (which checkpoints and feature caches fit it), `rlrt.schedule` (the learning rate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn

from callbacks.perturb import drop_modalities
from rlrt.batch_features import FiniteCheck, cached_features, encode_batch
from rlrt.cache.format import check_fields
from rlrt.cca_tracking import NoiseFloors, alignment_metrics, build_cca_parts
from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder
from rlrt.features import Features
from rlrt.identity import (
    adopt_cache_fingerprints,
    cache_encoder_fields,
    check_checkpoint,
    check_data_classes,
    encoder_identity,
    fill_unsaved_state,
    prepare_for_saving,
)
from rlrt.metrics import stage_metrics
from rlrt.missing import FLAGS, Strategy, check_strategy, present_flags
from rlrt.modules.head import build_head, check_arguments, robust_path
from rlrt.running_log import RunningCorrelationLog
from rlrt.schedule import adamw_warmup_cosine


class RLRT(LightningModule):
    """Robust latent representation tuning on two frozen encoders.

    How the parts fit together, and the modules it calls: this module's docstring.

    Args:
        image_encoder: the frozen image encoder (its weights are never checkpointed; its
            identity is, and is checked on load).
        text_encoder: the frozen text encoder (checkpointed and checked as the image encoder).
        num_classes: number of classes, from the data module (linked by the CLI).
        task: `multilabel` or `multiclass`, from the data module (linked by the CLI).
        class_names: class names in label order, from the data module (linked by the CLI).
        common_dim: width `d_c` of the common space MoLT maps both modalities into.
        num_heads: attention heads of MoLT's cross-attention.
        fbp_window: FBP's pooling window `s` (the robust representation has `d_c / s` values).
        fusion_dim: width of the fusion head's inputs (each representation projected to it).
        hidden_dim: hidden width of the classifier MLP.
        num_queries: learnable queries of the attention fusion.
        dropout: dropout in the fusion head.
        fusion: `attention` (learnable queries attend over the per-layer robust representations
            and the two modality embeddings) or `layer_weights` (the linear layer weighting, an
            ablation; checkpoints from before this switch are `layer_weights`).
        cross_attention: MoLT's cross-attention between the modalities (ablation: off).
        bilinear: FBP (ablation: off, concatenation instead).
        use_robust: feed the robust representations to the fusion head (off: no MoLT, no FBP).
        use_image_embedding: feed the image encoder's own embedding to the fusion head.
        use_text_embedding: feed the text encoder's own embedding to the fusion head.
        beta: weight of `L_CCA` (one minus the mean canonical correlation, in `[0, 1]`); 0 turns
            it off.
        cca_reg: relative ridge `r` added to the covariances of `L_CCA` and `cca_corr`.
        cca_top_k: average only the top-k canonical correlations (loss and `cca_corr`).
        cca_drop_constant: remove from `L_CCA` and `cca_corr` the direction of `h` that MoLT's
            LayerNorm makes constant (its correlation is always 0); false: the mean over all
            `common_dim` correlations, which can then never exceed `(common_dim - 1) / common_dim`.
        cca_window: samples the loss's covariances rest on (carried across steps). A window
            under `10 * common_dim` samples is refused unless `cca_allow_degenerate`: CCA on
            fewer samples scores high on noise alone.
        cca_allow_degenerate: accept a `cca_window` under `10 * common_dim` samples anyway.
        missing_strategy: a missing modality gets the dummy input (`dummy`: all-ones image after
            normalisation, empty text) or zeroed features (`zero`), see `rlrt.missing`. This is
            the default; `use_missing_strategy` puts another in effect (the `MissingModality`
            callback does, for the duration of a stage, when its `strategy` is set). The
            attribute `missing_strategy` is the strategy in effect.
        modality_dropout: training-time modality dropout (off by default, as in the paper): at
            each training step, each sample with both modalities loses one of them with this
            probability (`callbacks.perturb.drop_modalities`). Unlike the missing-modality
            protocol, which fixes the missing samples by id, this redraws every step: a
            regulariser, not a property of the data.
        lr: AdamW's learning rate on the trainable part (cosine schedule).
        weight_decay: AdamW's weight decay.
        warmup_fraction: fraction of the training steps spent in the linear warm-up.
    """

    def __init__(
        self,
        *,
        image_encoder: FrozenImageEncoder,
        text_encoder: FrozenTextEncoder,
        num_classes: int = 2,
        task: Literal["multilabel", "multiclass"] = "multiclass",
        class_names: list[str] | None = None,
        common_dim: int = 256,
        num_heads: int = 1,
        fbp_window: int = 4,
        fusion_dim: int = 256,
        hidden_dim: int = 512,
        num_queries: int = 4,
        fusion: Literal["attention", "layer_weights"] = "attention",
        dropout: float = 0.1,
        cross_attention: bool = True,
        bilinear: bool = True,
        use_robust: bool = True,
        use_image_embedding: bool = True,
        use_text_embedding: bool = True,
        beta: float = 0.03,
        cca_reg: float = 1e-3,
        cca_top_k: int | None = None,
        cca_drop_constant: bool = True,
        cca_window: int = 4096,
        cca_allow_degenerate: bool = False,
        missing_strategy: Literal["dummy", "zero"] = "dummy",
        modality_dropout: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
    ) -> None:
        super().__init__()
        # hparams hold the encoders' configs, never the modules (their weights), so that
        # `RLRT.load_from_checkpoint` rebuilds them from config whether or not the CLI built them.
        self.save_hyperparameters(ignore=["image_encoder", "text_encoder"])
        self.hparams["image_encoder"] = image_encoder.config
        self.hparams["text_encoder"] = text_encoder.config
        self.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
        check_arguments(image_encoder, text_encoder, self.hparams)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.task = task
        self.num_classes = num_classes
        self.class_names = class_names
        self.beta = beta
        # the strategy in effect: the hparam, unless a caller (`MissingModality`) sets another
        self.missing_strategy = check_strategy(missing_strategy)
        # MoLT (None with neither `use_robust` nor `beta`), FBP, fusion (`rlrt.modules.head`)
        self.molt, self.fbp, self.fusion = build_head(image_encoder, text_encoder, self.hparams)
        # the loss, `cca_corr` and its training features (`rlrt.cca_tracking`)
        parts = build_cca_parts(self.molt, self.hparams)
        self.cca, self.val_alignment, self.test_alignment, self.fit_moments = parts
        self._running_log = RunningCorrelationLog()  # train/cca_corr_running's epoch mean
        self._noise_floors = NoiseFloors()
        self._finite_check = FiniteCheck()  # cached features, once per sample
        self.val_metrics, self.test_metrics = stage_metrics(task, num_classes)

    # ---------------------------------------------------------------- encoding and forward
    def encode(self, batch: dict[str, Any]) -> Features:
        """Run the frozen encoders on a batch dict, the missing modalities replaced by the
        strategy in effect (`rlrt.missing`)."""
        return encode_batch(self.image_encoder, self.text_encoder, batch, self.missing_strategy)

    def use_missing_strategy(self, strategy: Strategy | None) -> str:
        """Put `strategy` in effect (None: back to the `missing_strategy` hparam); returns the
        strategy in effect before, for the caller to restore (`MissingModality` does)."""
        previous = self.missing_strategy
        default = self.hparams.missing_strategy
        self.missing_strategy = check_strategy(default if strategy is None else strategy)
        return previous

    def features_of(self, batch: dict[str, Any]) -> Features:
        """The batch's Features: from the cache when the batch carries them (checked finite the
        first time a stage meets a sample), else encoded now (`rlrt.batch_features`)."""
        if "features" not in batch:
            return self.encode(batch)
        self._finite_check(batch["features"], batch["id"], self._trainer)
        return cached_features(batch, self.missing_strategy)

    def forward(self, features: Features) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Features -> logits `(B, C)`, `h_i` `(L_s, B, d_c)`, `h_t` `(L_s, B, d_c)`.

        Without MoLT (`use_robust=False`, `beta=0`) `h_i` and `h_t` are None. Features of another
        floating dtype (float16 from a cache, say) are cast to the head's dtype first.
        """
        if features.image_tokens.dtype != self.dtype:
            features = features.to(dtype=self.dtype)
        if self.molt is None:
            logits = self.fusion(None, features.image_embedding, features.text_embedding)
            return logits, None, None
        robust, h_image, h_text = robust_path(self.molt, self.fbp, features)
        logits = self.fusion(robust, features.image_embedding, features.text_embedding)
        return logits, h_image, h_text

    def setup(self, stage: str) -> None:
        """Refuse a data module with another number of classes, and a feature cache built with
        other encoders than this model's; load the encoders' weights when the data is encoded
        online (before a DDP wrap sees the model), never when it comes from the cache."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        check_data_classes(self.num_classes, datamodule)
        manifest = getattr(datamodule, "feature_cache_manifest", None)
        if manifest is not None:
            encoders = {"image": self.image_encoder, "text": self.text_encoder}
            folder = Path(str(datamodule.feature_cache))
            check_fields(*cache_encoder_fields(encoders, manifest), folder)
            adopt_cache_fingerprints(encoders, manifest)
        else:  # straight onto the trainer's device (Lightning moves the module after setup)
            device = self.trainer.strategy.root_device if self._trainer else None
            self.image_encoder.load(device)
            self.text_encoder.load(device)

    # ---------------------------------------------------------------- steps
    def task_loss(self, logits: Tensor, label: Tensor) -> Tensor:
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, label.float())
        return F.cross_entropy(logits, label.long())

    def correlation_loss(
        self, h_image: Tensor | None, h_text: Tensor | None, both: Tensor
    ) -> Tensor:
        """Training `L_CCA` over the samples with both modalities present (0 without MoLT or
        with `beta = 0`). The running statistics see every step, even one with no such sample."""
        if self.cca is None or h_image is None or h_text is None:
            return torch.zeros((), device=both.device)
        return self.cca(h_image, h_text, both).to(h_image.dtype)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor | None:
        if len(batch["id"]) == 0:
            return None  # every sample of this batch was dropped as unreadable: nothing to learn
        logits, h_image, h_text = self(self.features_of(batch))
        label = batch["label"]
        both = torch.logical_and(*present_flags(batch, logits.device))  # (B,)
        task_loss = self.task_loss(logits, label)
        batch_size = logits.shape[0]
        on_step = stage == "train"
        if on_step:
            cca = self.correlation_loss(h_image, h_text, both)
            loss = task_loss + self.beta * cca
            if self.fit_moments is not None and h_image is not None:
                self.fit_moments.update(h_image, h_text, both)
            if self.cca is not None and self.cca.active:  # nothing to report while it fills
                value = self._running_log.step(self, cca, both, batch_size)
                if value is not None:
                    self.log("train/cca_corr_running_step", value, batch_size=batch_size)
        else:
            loss = task_loss
            alignment = self.val_alignment if stage == "val" else self.test_alignment
            if alignment is not None and h_image is not None:
                alignment.update(h_image[:, both], h_text[:, both])
        logged = {"batch_size": batch_size, "on_step": on_step, "on_epoch": True}
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=not on_step, **logged)
        self.log(f"{stage}/task_loss", task_loss, sync_dist=not on_step, **logged)
        metrics = {"val": self.val_metrics, "test": self.test_metrics}.get(stage)
        if metrics is not None:
            metrics.update(self.scores(logits), label.long())
            self.log_dict(metrics, batch_size=batch_size, prog_bar=stage == "val")
        return loss

    def _log_alignment(self, stage: str) -> None:
        """Log `cca_corr`, per layer pair and with its noise floor (`alignment_metrics`)."""
        alignment = self.val_alignment if stage == "val" else self.test_alignment
        if alignment is None:
            return
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        floors = self._noise_floors
        metrics = alignment_metrics(stage, alignment, self.fit_moments, floors, fitting=fitting)
        self.log_dict(metrics, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        mean = self._running_log.compute_and_reset()
        if mean is not None:
            self.log("train/cca_corr_running_epoch", mean, on_step=False, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        self._log_alignment("val")

    def on_test_epoch_end(self) -> None:
        self._log_alignment("test")

    def scores(self, logits: Tensor) -> Tensor:
        """Sigmoid (multi-label) or softmax (multi-class) scores, `(B, C)`."""
        return logits.sigmoid() if self.task == "multilabel" else logits.softmax(dim=-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if batch_idx == 0 and self.fit_moments is not None:
            self.fit_moments.reset()  # `cca_corr` fits on this epoch's training features
        rate = self.hparams.modality_dropout
        if rate > 0:
            image_present, text_present = drop_modalities(*present_flags(batch), rate)
            batch = {**batch, "image_present": image_present, "text_present": text_present}
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """`{"id": [str], "scores": (B, C), "image_present": (B,), "text_present": (B,)}`."""
        logits, _, _ = self(self.features_of(batch))
        flags = dict(zip(FLAGS, present_flags(batch)))  # image_present, text_present
        return {"id": batch.get("id"), "scores": self.scores(logits), **flags}

    # ---------------------------------------------------------------- optimisation
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW on the trainable part, warm-up then cosine decay (`rlrt.schedule`)."""
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return adamw_warmup_cosine(self.trainable_parameters(), self.hparams, total)

    # ---------------------------------------------------------------- checkpoints
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> RLRT:
        """Lightning's `load_from_checkpoint`, with `weights_only=True` unless given: a
        checkpoint holds tensors and plain values only, and nothing else is unpickled."""
        kwargs.setdefault("weights_only", True)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def encoder_identity(self) -> dict[str, Any]:
        return encoder_identity({"image": self.image_encoder, "text": self.text_encoder})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainable part and the encoders' identity, never the frozen weights."""
        prepare_for_saving(checkpoint, self.encoder_identity())  # Lightning calls this hook last

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a corrupted checkpoint or one trained on other encoders or with another head;
        refill the frozen weights from ours."""
        ours = {**self.hparams, "num_classes": self.num_classes, "task": self.task}
        check_checkpoint(checkpoint, ours, self.encoder_identity(), self._trainer)
        if self._trainer is not None and self.trainer.state.fn != TrainerFn.FITTING:
            # Evaluating: the training callbacks' states (checkpointing, exact resume) have no
            # use, and Lightning would ask for those callbacks in a warning at every test.
            checkpoint.pop("callbacks", None)
        fill_unsaved_state(checkpoint["state_dict"], self.state_dict())
