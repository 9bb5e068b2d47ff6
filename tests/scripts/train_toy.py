"""Train a tiny Transformer on the copy task with qkv's engine (used by test_train.py,
also under torchrun)."""

from __future__ import annotations

import argparse
import time

import torch

from qkv import Transformer, TransformerConfig
from qkv.data.toy import toy_batches
from qkv.train import TrainConfig, Trainer, seq2seq_loss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--adam-eps", type=float, default=1e-9)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step (kill tests)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    vocab = 12
    model = Transformer(TransformerConfig.tiny(vocab, vocab, dropout=args.dropout, d_model=32))

    def loss_fn(model, batch):
        if args.sleep:
            time.sleep(args.sleep)
        return seq2seq_loss(model, batch, label_smoothing=0.0)

    trainer = Trainer(
        model,
        TrainConfig(
            max_steps=args.steps,
            lr=args.lr,
            eps=args.adam_eps,
            warmup_steps=5,
            grad_accum=args.grad_accum,
            checkpoint_every=args.checkpoint_every,
            log_every=1,
            keep_checkpoints=2,
        ),
        args.run_dir,
        batches=toy_batches(vocab_size=vocab, batch_size=args.batch_size, batches_per_epoch=7),
        loss_fn=loss_fn,
        meta={"family": "transformer", "model_config": model.config.to_dict()},
        progress=False,
    )
    trainer.fit(resume=args.resume)


if __name__ == "__main__":
    main()
