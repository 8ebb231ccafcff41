"""Prefetching runs ahead but checkpoints only what was consumed: resume stays exact."""

import json

import numpy as np

from pretrax import config as config_lib
from pretrax.data.pipeline import make_train_iterator
from pretrax.data.prefetch import Prefetcher

CFG = ["data.seq_len=64", "train.batch_size=4"]  # small, so 4 rows of real documents


def test_prefetched_batches_and_state_match_the_plain_iterator():
    cfg = config_lib.load(None, CFG)
    plain = make_train_iterator(cfg)
    ahead = Prefetcher(make_train_iterator(cfg), depth=3)
    for _ in range(5):
        a, b = next(plain), next(ahead)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        assert ahead.get_state() == plain.get_state()  # the state after the consumed batch, not the prefetched ones
    state = json.loads(json.dumps(ahead.get_state()))
    want = [next(plain) for _ in range(3)]
    ahead.close()
    resumed = Prefetcher(make_train_iterator(cfg), depth=2)
    resumed.set_state(state)
    for w in want:
        got = next(resumed)
        np.testing.assert_array_equal(got["inputs"], w["inputs"])
    resumed.close()


def test_errors_in_the_producer_reach_the_consumer():
    class Broken:
        def get_state(self):
            return {}

        def __next__(self):
            raise ValueError("bad record")

    p = Prefetcher(Broken(), depth=1)
    try:
        next(p)
    except ValueError as e:
        assert "bad record" in str(e)
    else:
        raise AssertionError("the producer's error was swallowed")


def test_worker_processes_give_identical_batches_and_states():
    plain = make_train_iterator(config_lib.load(None, CFG))
    parallel = make_train_iterator(config_lib.load(None, CFG + ["data.num_workers=2"]))
    for _ in range(4):
        a, b = next(plain), next(parallel)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert parallel.get_state() == plain.get_state()
    # resume a worker-backed iterator from the plain one's state (and the other way round)
    want = [next(plain) for _ in range(2)]
    resumed = make_train_iterator(config_lib.load(None, CFG + ["data.num_workers=2"]))
    resumed.set_state(json.loads(json.dumps(parallel.get_state())))
    for w in want:
        np.testing.assert_array_equal(next(resumed)["inputs"], w["inputs"])
    for it in (plain, parallel, resumed):
        it.close()  # worker processes stop now, not at garbage collection
