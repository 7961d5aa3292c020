"""PyTorch Lightning: a LightningModule whose `configure_optimizers` returns a gradwise optimizer and scheduler.

The module trains a small MLP on synthetic clusters. `configure_optimizers` builds the optimizer with
`gradwise.create` (biases and norms without weight decay, per-module learning rates from
`gradwise.lr_multipliers`) and a warm-up + cosine schedule stepped every batch. Lightning saves and restores
the optimizer's `state_dict` with its checkpoints (`trainer.fit(..., ckpt_path=...)`).

    python examples/lightning_module.py --steps 60
"""

from __future__ import annotations

import argparse
import math

import lightning.pytorch as pl
import torch
from torch import nn

import gradwise as gw


def clusters(n: int = 512, d: int = 16, classes: int = 4, seed: int = 0) -> torch.utils.data.TensorDataset:
    centers = torch.randn(classes, d, generator=torch.Generator().manual_seed(1234)) * 2.0  # one task
    g = torch.Generator().manual_seed(seed)  # its draws
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.TensorDataset(centers[y] + torch.randn(n, d, generator=g), y)


class Classifier(pl.LightningModule):
    def __init__(self, optimizer: str = "adan", lr: float = 3e-3, weight_decay: float = 0.02, steps: int = 60):
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, 4)
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        h = self.hparams
        groups = gw.lr_multipliers(self, {"head.*": 3.0}, lr=h.lr, weight_decay=h.weight_decay)
        opt = gw.create(h.optimizer, groups)
        warmup = max(1, h.steps // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, h.steps - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def trainer(steps: int, checkpoint_dir: str | None = None) -> pl.Trainer:
    """A CPU trainer; with `checkpoint_dir`, a checkpoint (model, optimizer, scheduler) after every epoch."""
    callbacks = []
    if checkpoint_dir is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=checkpoint_dir, save_top_k=-1, every_n_epochs=1))
    return pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=callbacks, deterministic=True,
    )


def loader(seed: int = 0, shuffle: bool = True) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(clusters(seed=seed), batch_size=64, shuffle=shuffle,
                                       generator=torch.Generator().manual_seed(seed))


def accuracy(model: Classifier, seed: int = 1) -> float:
    x, y = clusters(seed=seed).tensors
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def main(steps: int = 60, optimizer: str = "adan") -> dict[str, float]:
    pl.seed_everything(0, verbose=False)
    model = Classifier(optimizer=optimizer, steps=steps)
    trainer(steps).fit(model, loader())
    early, late = model.losses[: max(1, steps // 6)], model.losses[-max(1, steps // 6):]
    result = {"first_loss": sum(early) / len(early), "last_loss": sum(late) / len(late), "accuracy": accuracy(model)}
    print(f"{optimizer}: loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}, "
          f"held-out accuracy {result['accuracy']:.2f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--optimizer", default="adan")
    main(**vars(parser.parse_args()))
