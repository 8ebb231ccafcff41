"""`pretrax data inspect`: training examples decoded, exactly as the model will see them."""

from __future__ import annotations

import numpy as np

from pretrax.config import Config
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.tokenizer import load_tokenizer


def describe_examples(cfg: Config, examples: int, *, width: int = 160) -> str:
    """The first `examples` packed segments of the first training batches, one block each."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    data = make_train_iterator(cfg)
    out: list[str] = []
    shown = 0
    while shown < examples:
        batch = next(data)
        for row in range(batch["inputs"].shape[0]):
            seg = batch["segment_ids"][row]
            for s in [s for s in np.unique(seg) if s > 0]:
                if shown == examples:
                    break
                at = seg == s
                inputs, targets = batch["inputs"][row][at], batch["targets"][row][at]
                mask = batch["loss_mask"][row][at]
                prefix = batch["bidirectional"][row][at]
                out.append(
                    f"--- example {shown} (row {row}, segment {s}, {int(at.sum())} tokens, "
                    f"{int(mask.sum())} in the loss, {int(prefix.sum())} bidirectional)\n"
                    f"inputs:  {_show(tokenizer, inputs, width)}\n"
                    f"targets: {_show(tokenizer, targets[mask > 0], width)}"
                )
                shown += 1
            if shown == examples:
                break
    return "\n".join(out)


def _show(tokenizer, ids: np.ndarray, width: int) -> str:
    text = repr(tokenizer.decode([int(i) for i in ids]))
    return text if len(text) <= width else text[: width - 3] + "..."
