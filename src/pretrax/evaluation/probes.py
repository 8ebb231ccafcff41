"""Zero-shot probes, as GPT-1 §5 ("Zero-shot Behaviors") runs them: a heuristic answers a task with
nothing but the language model's probabilities, so the score can be followed over pretraining.

GPT-1 picks a QA answer by the average token log-probability the model gives it after the document and
question, and judges a sentence's acceptability by its average token log-probability. The probes here are
those heuristics over pretrax's own local data (evals/), scored with likelihood.py (no lm-eval needed):

- ``qa``: GPT-1's QA heuristic over evals/mc.jsonl: the choice with the highest average token
  log-probability given the context is the answer (lm-eval's pretrax_mc uses the total: acc).
- ``acceptability``: GPT-1's acceptability heuristic, as a pairwise choice: each real line (the Zen of
  Python, evals/zen.jsonl, and the Python lines of evals/cloze.jsonl) against the same words in a fixed
  shuffled order; right when the real line has the higher average token log-probability.
- ``cloze``: the cloze continuation is the model's greedy one (LAMBADA-style, as GPT-2's zero-shot
  evaluation; the same number as lm-eval's pretrax_cloze acc).

Each gives ``probe/<name>/acc`` in [0, 1]; chance is 1/4 for qa, 1/2 for acceptability.
"""

from __future__ import annotations

import json
import random

from pretrax.errors import ConfigError
from pretrax.evaluation import likelihood
from pretrax.evaluation.tasks import EVALS_DIR

PROBES = ("qa", "acceptability", "cloze")


def _jsonl(name: str) -> list[dict]:
    path = EVALS_DIR / name
    if not path.is_file():
        raise ConfigError(f"the probes read {path}, which is missing; run from a pretrax checkout (evals/)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _average(model: likelihood.Model, pairs: list[tuple[str, str]]) -> list[float]:
    """Average token log-probability of each continuation given its context."""
    ids = [likelihood.encode_pair(model.tokenizer, c, x) for c, x in pairs]
    return [lp / max(len(cont), 1) for (lp, _), (_, cont) in zip(likelihood.token_loglikelihoods(model, ids), ids)]


def qa(model: likelihood.Model, limit: int | None = None) -> float:
    docs = _jsonl("mc.jsonl")[:limit]
    flat = [(d["context"], choice) for d in docs for choice in d["choices"]]
    scores, right, at = _average(model, flat), 0, 0
    for d in docs:
        mine = scores[at: at + len(d["choices"])]
        right += max(range(len(mine)), key=mine.__getitem__) == d["label"]
        at += len(mine)
    return right / len(docs)


def shuffled(text: str, seed: int) -> str:
    """text's words in a fixed order that differs from the original (lines of one word stay as they are)."""
    words = text.split(" ")
    order = list(range(len(words)))
    rng = random.Random(seed)
    while len(words) > 1 and order == sorted(order):
        rng.shuffle(order)
    return " ".join(words[i] for i in order)


def acceptability_pairs(limit: int | None = None) -> list[tuple[str, str]]:
    """(real line, its shuffled form) pairs: the Zen of Python's aphorisms, then the cloze items' code."""
    lines = [d["text"] for d in _jsonl("zen.jsonl")] + [(d["context"] + d["target"]).splitlines()[-1].strip()
                                                        for d in _jsonl("cloze.jsonl")]
    lines = [line for line in lines if len(line.split(" ")) > 1][:limit]
    return [(line, shuffled(line, seed)) for seed, line in enumerate(lines)]


def acceptability(model: likelihood.Model, limit: int | None = None) -> float:
    pairs = acceptability_pairs(limit)
    scores = _average(model, [("", text) for pair in pairs for text in pair])
    return sum(scores[2 * i] > scores[2 * i + 1] for i in range(len(pairs))) / len(pairs)


def cloze(model: likelihood.Model, limit: int | None = None) -> float:
    docs = _jsonl("cloze.jsonl")[:limit]
    results = likelihood.loglikelihoods(model, [(d["context"], d["target"]) for d in docs])
    return sum(greedy for _, greedy in results) / len(docs)


def run_probes(model: likelihood.Model, names: tuple[str, ...] = PROBES, limit: int | None = None
               ) -> dict[str, float]:
    """{"probe/<name>/acc": score} for each named probe (limit: at most that many items each)."""
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ConfigError(f"unknown probe {unknown[0]!r}; the probes are {', '.join(PROBES)}")
    fns = {"qa": qa, "acceptability": acceptability, "cloze": cloze}
    return {f"probe/{name}/acc": fns[name](model, limit) for name in names}
