"""Hugging Face Transformers `Trainer` with a gradwise optimizer and a torch scheduler.

A tiny BERT classifier built from a config (random weights, nothing downloaded) learns a synthetic task:
is the first token of the sequence in the upper half of the vocabulary? The optimizer comes from
`gradwise.create` with layer-wise learning-rate decay, the scheduler from `torch.optim.lr_scheduler`; both
go to `Trainer(optimizers=(opt, scheduler))`.
`Trainer` saves the optimizer's `state_dict` with each checkpoint and loads it on
`train(resume_from_checkpoint=...)`, so a resumed run continues with the same moments.

    python examples/hf_trainer.py --steps 60
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

import gradwise as gw


class FirstTokenTask(torch.utils.data.Dataset):
    """Random token sequences labelled 1 when their first token is in the upper half of the vocabulary."""

    def __init__(self, n: int = 256, length: int = 8, vocab: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 0] >= vocab // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_model(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def make_trainer(out_dir: str, steps: int, save_steps: int, seed: int = 0, optimizer: str = "adabelief",
                 lr: float = 3e-3) -> Trainer:
    model = tiny_model(seed)
    groups = gw.layerwise_lr_decay(model, lr=lr, decay=0.8, blocks="bert.encoder.layer", weight_decay=0.01)
    opt = gw.create(optimizer, groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 10))
    args = TrainingArguments(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=32, save_steps=save_steps,
        save_strategy="steps", logging_steps=5, report_to="none", seed=seed, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=FirstTokenTask(), optimizers=(opt, scheduler))


def accuracy(model: torch.nn.Module, data: FirstTokenTask) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=data.ids).logits
    return (logits.argmax(1) == data.labels).float().mean().item()


def main(
    steps: int = 60, out_dir: str | None = None, optimizer: str = "adabelief", lr: float = 3e-2
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(out_dir or tmp, steps, save_steps=steps, optimizer=optimizer, lr=lr)
        losses = []
        trainer.add_callback(_RecordLoss(losses))
        trainer.train()
        result = {"first_loss": losses[0], "last_loss": losses[-1],
                  "accuracy": accuracy(trainer.model, FirstTokenTask(seed=1))}
    print(f"{optimizer}: loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}, "
          f"held-out accuracy {result['accuracy']:.2f}")
    return result


class _RecordLoss(TrainerCallback):
    """Keeps each logged training loss."""

    def __init__(self, losses: list[float]):
        self.losses = losses

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--optimizer", default="adabelief")
    parser.add_argument("--lr", type=float, default=3e-2)
    main(**vars(parser.parse_args()))
