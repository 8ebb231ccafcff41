"""Evaluation: lm-eval-harness tasks through pretrax's own scoring, and GPT-1's zero-shot probes.

likelihood.py  text -> log-probabilities and greedy continuations (batched, sharded; no lm-eval)
lm_adapter.py  that, as lm-eval's `LM` interface, and lm-eval's evaluator over it (imports lm-eval)
tasks.py       task names -> lm-eval task configs (evals/*.yaml over local JSONL, checked; or lm-eval's)
probes.py      GPT-1 §5's heuristics scored by the model (no lm-eval)
evaluate.py    `evaluate_tasks` (in-memory params, as training calls it) and `pretrax eval` over checkpoints
"""

from pretrax.evaluation.evaluate import evaluate_tasks

__all__ = ["evaluate_tasks"]
