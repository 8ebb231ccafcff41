"""`pretrax data inspect`: training examples decoded, exactly as the model will see them."""

from __future__ import annotations

import numpy as np

from pretrax.config import Config
from pretrax.data.batch_examples import packed_examples
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.tokenizer import config_tokenizer
from pretrax.models.family import family_of


def describe_examples(cfg: Config, examples: int, *, width: int = 160) -> str:
    """The first `examples` packed segments of the first training batches, one block each."""
    tokenizer = config_tokenizer(cfg.data)
    data = make_train_iterator(cfg)
    side = family_of(cfg.model).example_side
    out: list[str] = []
    shown = 0
    while shown < examples:
        for ex in packed_examples(next(data)):
            if shown == examples:
                break
            out.append(
                f"--- example {shown} (row {ex.row}, segment {ex.segment}, {ex.tokens} tokens, "
                f"{len(ex.targets)} in the loss, {len(ex.inputs)} {side})\n"
                f"inputs:  {_show(tokenizer, ex.inputs, width)}\n"
                f"targets: {_show(tokenizer, ex.targets, width)}"
            )
            shown += 1
    data.close()
    return "\n".join(out)


def _show(tokenizer, ids: np.ndarray, width: int) -> str:
    text = repr(tokenizer.decode([int(i) for i in ids]))
    return text if len(text) <= width else text[: width - 3] + "..."
