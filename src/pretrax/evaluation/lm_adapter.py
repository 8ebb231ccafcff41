"""A pretrax model as an lm-eval-harness `LM`, and lm-eval's evaluator run over it.

lm-eval asks three things of a model (loglikelihood, loglikelihood_rolling, generate_until); each is
answered by likelihood.py, so this file only translates requests and results. It imports lm-eval at
the top: import it only where lm-eval is wanted (`pretrax eval --tasks`, `evaluate_tasks`), never at
pretrax's import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np

from lm_eval.api.model import LM

from pretrax.evaluation import likelihood

DEFAULT_MAX_GEN_TOKS = 64


class PretraxLM(LM):
    """lm-eval's LM over in-memory parameters (likelihood.Model): a checkpoint's or a training run's."""

    def __init__(self, model: likelihood.Model):
        super().__init__()
        self.model = model

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = likelihood.loglikelihoods(self.model, [tuple(r.args) for r in requests])
        for r, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = likelihood.rolling_loglikelihoods(self.model, [r.args[0] for r in requests])
        for r, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (a task's temperature and sampling settings are not used), one request at a time."""
        out = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            text = likelihood.generate_until(self.model, context, until,
                                             int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)))
            self.cache_hook.add_partial("generate_until", r.args, text)
            out.append(text)
        return out


def run_tasks(model: likelihood.Model, resolved, *, limit: int | None = None) -> dict[str, float]:
    """lm-eval's evaluator over the resolved tasks: {"eval/<task>/<metric>": value}, the metric named
    as lm-eval reports it ("acc", "acc_norm", "exact_match"; a filter other than "none" is appended:
    "exact_match_strict-match"); standard errors left out.

    This is `lm_eval.simple_evaluate` without its bookkeeping: it calls lm_eval.evaluator.evaluate after
    the same task set-up (zero-shot unless a task says otherwise, lm-eval's seeds), and leaves out the
    environment report simple_evaluate appends, which imports torch and runs subprocesses (about 10 s on
    a 2-core machine, every call, which a training run evaluating every eval_every steps would pay)."""
    with _offline(not resolved.registry):  # local JSONL only: nothing to fetch, so datasets never asks the Hub
        import datasets  # after the variables: datasets reads them when first imported
        from lm_eval import evaluator
        from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED

        datasets.disable_progress_bars()  # "Generating test split" per local task file
        logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its per-task INFO lines would drown pretrax's
        states = random.getstate(), np.random.get_state()  # given back after: a training run's are its own
        try:
            random.seed(DEFAULT_RANDOM_SEED)  # what simple_evaluate seeds (few-shot sampling, shuffles)
            np.random.seed(DEFAULT_OTHER_SEED)
            loaded = resolved.task_manager.load(resolved.specs)
            for task in loaded["tasks"].values():
                if task.get_config("num_fewshot") is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
            results = evaluator.evaluate(lm=PretraxLM(model), task_dict=loaded, limit=limit, bootstrap_iters=0,
                                         log_samples=False)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
    metrics = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or "_stderr" in metric or not isinstance(value, (int, float)):
                continue
            metrics[f"eval/{task}/{metric}" + ("" if filt == "none" else f"_{filt}")] = float(value)
    return metrics


@contextlib.contextmanager
def _offline(on: bool):
    """HF_DATASETS_OFFLINE and HF_HUB_OFFLINE set to 1 while inside (unless already set), then as they were."""
    names = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    before = {n: os.environ.get(n) for n in names}
    if on:
        for n in names:
            os.environ.setdefault(n, "1")
    try:
        yield
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
