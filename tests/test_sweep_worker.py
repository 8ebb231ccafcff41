"""pretrax sweep --worker: any number of workers share one sweep dir through claims, on a disk or on GCS.

Real `pretrax sweep --worker` processes train real tiny points; one is killed with SIGKILL mid-point and
its point is taken over from its checkpoint. The claim layer itself races real threads and processes
on a local disk and on a real GCS server (fake-gcs-server, tests/gcs_fixture.py).
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import TINY, cli_in_process, cpu_xla_flags
from gcs_fixture import PRETRAX, child_env, gcs  # noqa: F401  (gcs: the fixture; imported before gcsfs loads)

from pretrax import storage
from pretrax.cli import main
from pretrax.sweeps import results
from pretrax.sweeps.claims import Claims
from pretrax.sweeps.grid import load_sweep
from pretrax.sweeps.identity import claim_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(REPO, "configs", "tiny.yaml")
STEPS = 12
# every point has the same shapes and constants (only the seed differs), so with one JAX compilation cache
# each program compiles once for all points and workers. A checkpoint every 4 steps (4, 8, 12: keep=2 still
# deletes one): a save costs a tiny run about 0.3 s of CPU, more than its 4 steps
COMMON = [*TINY, f"train.steps={STEPS}", "checkpoint.every=4", "checkpoint.keep=2"]
SEEDS = [0, 1, 2, 3, 4, 5]
NAMES = [f"seed={s}" for s in SEEDS]


def write_sweep(path, out, grid=None, overrides=COMMON):
    spec = {"base": TINY_YAML, "dir": str(out), "overrides": list(overrides),
            "grid": grid or {"product": {"run.seed": SEEDS}}}
    path.write_text(json.dumps(spec))  # JSON is YAML
    return str(path)


def read_csv(url):
    return list(csv.DictReader(io.StringIO(storage.read_text(url))))


def start_worker(sweep, log, *extra):
    """A `pretrax sweep --worker` process; it shares the session's JAX compilation cache (conftest.py)."""
    env = child_env(PYTHONWARNINGS="ignore")
    return subprocess.Popen([PRETRAX, "sweep", sweep, "--worker", "--stale-after", "5", *extra], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def claim_files(sweep_dir, name):
    return sorted(storage.listdir(storage.join(sweep_dir, "claims", name)))


def checkpoint_steps(run_dir):
    return sorted(int(n) for n in storage.listdir(storage.join(run_dir, "checkpoints")) if n.isdigit())


def step_one_rows(run_dir):
    """How many times step 1 was logged, superseded rows included: 2 would mean a second start from scratch."""
    count = 0
    for name in ("metrics.jsonl", "metrics.superseded.jsonl"):
        path = storage.join(run_dir, name)
        if storage.isfile(path):
            count += sum(json.loads(line)["step"] == 1 for line in storage.read_text(path).splitlines()
                         if line.strip().endswith("}"))
    return count


def wait_all(procs, timeout):
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.wait(timeout=max(1, deadline - time.monotonic()))


# --- the whole thing: 3 workers, one killed mid-point, a new one started --------------------------------

@pytest.mark.slow
def test_three_workers_run_every_point_once_and_a_killed_workers_point_resumes(tmp_path):
    sweep_dir = tmp_path / "runs"
    sweep = write_sweep(tmp_path / "seeds.yaml", sweep_dir)
    procs = [start_worker(sweep, tmp_path / f"worker{i}.log") for i in range(3)]
    try:
        victim, pid, seen = None, None, 0
        deadline = time.monotonic() + 400
        while victim is None:  # a point that has a checkpoint and is not finished: kill its worker
            assert time.monotonic() < deadline, "no point reached a checkpoint"
            assert all(p.poll() is None for p in procs), "a worker ended before any point was killed"
            for name in NAMES:
                files = claim_files(str(sweep_dir), name)
                steps = checkpoint_steps(str(sweep_dir / name)) if files == ["1"] else []
                if steps and steps[-1] < STEPS:
                    victim, seen = name, steps[-1]
                    pid = json.loads(storage.read_text(str(sweep_dir / "claims" / name / "1")))["pid"]
                    os.kill(pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
        killed = next(p for p in procs if p.pid == pid)
        killed.wait(timeout=30)
        assert claim_files(str(sweep_dir), victim) == ["1"], "the point finished before the kill landed"
        procs.append(start_worker(sweep, tmp_path / "worker3.log"))  # a new machine joins
        wait_all(procs, timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = {i: (tmp_path / f"worker{i}.log").read_text() for i in range(4)}
    assert killed.returncode == -signal.SIGKILL
    for i, p in enumerate(procs):
        if p is not killed:
            assert p.returncode == 0, logs[i][-3000:]

    rows = read_csv(str(sweep_dir / "results.csv"))
    assert [r["point"] for r in rows] == NAMES and all(r["status"] == "ok" for r in rows)
    for name in NAMES:
        about = json.loads((sweep_dir / "results" / f"{name}.json").read_text())
        if name == victim:  # taken over once (attempt 2), from the checkpoint the killed worker left
            assert claim_files(str(sweep_dir), name) == ["1", "2", "2.ok"]
            assert about["attempt"] == 2 and about["start_step"] >= seen > 0
        else:  # claimed once, finished once
            assert claim_files(str(sweep_dir), name) == ["1", "1.ok"]
            assert about["attempt"] == 1 and about["start_step"] == 0
        assert step_one_rows(str(sweep_dir / name)) == 1  # no point trained twice from scratch
        steps = [json.loads(line)["step"] for line in (sweep_dir / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == STEPS  # each logged step once, up to the end
        assert float(about["row"]["eval_loss"]) == float(next(r for r in rows if r["point"] == name)["eval_loss"])
    everything = "".join(logs.values())
    assert everything.count("went stale; taking it over") == 1
    assert sum(f"{n}: training in" in everything for n in NAMES) == 6
    assert everything.count(": training in") == 7  # 6 points + 1 takeover, nothing else
    assert len({r["eval_loss"] for r in rows}) == 6  # each seed really trained its own run


@pytest.mark.slow
def test_a_preempted_worker_releases_its_point_and_the_next_worker_resumes_it_at_once(tmp_path):
    """SIGTERM (a preemption, stop.sh): the point saves a checkpoint, the worker releases its claim and exits
    143; a worker started next takes the point over without waiting --stale-after (here 10 minutes)."""
    sweep_dir = tmp_path / "runs"
    # 20 steps: the SIGTERM goes within 0.05 s of the first checkpoint (step 4), so 16 steps are its margin,
    # and the resumed half saves at 8, 12, 16, 20 (40 steps with a save every 2 made it 18 saves)
    sweep = write_sweep(tmp_path / "one.yaml", sweep_dir, grid={"product": {"run.seed": [7]}},
                        overrides=[*COMMON, "train.steps=20"])
    first = start_worker(sweep, tmp_path / "first.log", "--stale-after", "600")
    deadline = time.monotonic() + 300
    while not checkpoint_steps(str(sweep_dir / "seed=7")):
        assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    claim = json.loads((sweep_dir / "claims" / "seed=7" / "1").read_text())
    assert claim["released"] and claim_files(str(sweep_dir), "seed=7") == ["1"]
    saved = checkpoint_steps(str(sweep_dir / "seed=7"))[-1]
    assert 0 < saved < 20

    second = start_worker(sweep, tmp_path / "second.log", "--stale-after", "600")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    about = json.loads((sweep_dir / "results" / "seed=7.json").read_text())
    assert about["attempt"] == 2 and about["start_step"] == saved and about["row"]["status"] == "ok"
    assert claim_files(str(sweep_dir), "seed=7") == ["1", "2", "2.ok"]
    assert "preempted; its checkpoint is saved" in (tmp_path / "first.log").read_text()


# --- claims: exactly one winner, heartbeats, stale takeover (disk and GCS) ------------------------------

@pytest.fixture(params=["local", "gcs"])
def sweep_root(request, tmp_path):
    """A sweep dir on this machine's disk, or in a fresh bucket of the real GCS test server."""
    if request.param == "local":
        return str(tmp_path / "sweep")
    return request.getfixturevalue("gcs").make_bucket() + "/sweeps/s"


def race(n, call):
    """Run call(i) in n threads released together; returns their results."""
    barrier, out = threading.Barrier(n), [None] * n

    def run(i):
        barrier.wait()
        out[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_of_racing_workers_exactly_one_claims_a_point_and_one_takes_over_a_released_claim(sweep_root):
    workers = [Claims(sweep_root, stale_after=60) for _ in range(8)]
    won = [c for c in race(8, lambda i: workers[i].try_claim("lr=0.1", 1)) if c is not None]
    assert len(won) == 1
    state = workers[0].scan(["lr=0.1", "lr=0.2"])
    assert state["lr=0.1"].attempt == 1 and state["lr=0.2"].attempt == 0
    assert state["lr=0.1"].content["pid"] == os.getpid() and not workers[0].is_stale("lr=0.1", state["lr=0.1"])

    won[0].release()  # e.g. preempted: free for the next worker at once
    state = workers[1].scan(["lr=0.1"])
    assert workers[1].is_stale("lr=0.1", state["lr=0.1"])
    again = [c for c in race(8, lambda i: workers[i].try_claim("lr=0.1", 2)) if c is not None]
    assert len(again) == 1 and won[0].lost() and not again[0].lost()
    again[0].finish("ok")
    state = workers[2].scan(["lr=0.1"])["lr=0.1"]
    assert state.attempt == 2 and state.outcome == "ok" and not workers[2].is_stale("lr=0.1", state)
    assert claim_files(sweep_root, "lr=0.1") == ["1", "2", "2.ok"]


CLAIM_IN_A_PROCESS = """
import sys
from pretrax import storage
from pretrax.sweeps.claims import Claims
claims = Claims(sys.argv[1], 60)
storage.exists(sys.argv[1])  # gcsfs imported and connected: what is left is the claim itself
print("ready", flush=True)
sys.stdin.readline()  # the go, written to every process at once
print("won" if claims.try_claim("d_model=64", 1) else "lost", flush=True)
"""


@pytest.mark.slow
def test_of_racing_processes_exactly_one_claims_a_point_on_gcs(gcs):
    sweep_dir = gcs.make_bucket() + "/s"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM_IN_A_PROCESS, sweep_dir], env=child_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    watchdog = threading.Timer(120, lambda: [p.kill() for p in procs])  # a hung start ends in EOF, not a hang
    watchdog.start()
    try:
        ready = [p.stdout.readline() for p in procs]
    finally:
        watchdog.cancel()
    assert ready == ["ready\n"] * 6, [p.stderr.read() for p in procs if p.poll() is not None]
    for p in procs:  # all six are waiting on their stdin: they claim within microseconds of each other
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, outs
    assert sorted(o for o, _ in outs) == ["lost\n"] * 5 + ["won\n"]
    assert [n for n in gcs.objects(sweep_dir) if "/claims/" in n] == ["s/claims/d_model=64/1"]


@pytest.mark.slow
def test_a_heartbeat_keeps_a_claim_fresh_and_without_it_the_claim_goes_stale_and_is_taken_over(sweep_root):
    # 3 s: a beat every 0.6 s stays fresh even when a loaded machine (or GCS) delays one by a second or two
    owner, other = Claims(sweep_root, stale_after=3), Claims(sweep_root, stale_after=3)
    claim = owner.try_claim("p=1", 1)
    logged, lost = [], []
    with claim.heartbeat(on_lost=lost.append, log=logged.append):
        deadline = time.monotonic() + 6  # twice stale_after: fresh all along, because it beats
        while time.monotonic() < deadline:
            assert not other.is_stale("p=1", other.scan(["p=1"])["p=1"])
            time.sleep(0.3)
    assert not lost and not logged
    beat = json.loads(storage.read_text(storage.join(sweep_root, "claims", "p=1", "1")))
    assert beat["heartbeat_at"] > beat["claimed_at"] + 1  # it was rewritten while it ran

    time.sleep(3.5)  # no heartbeat (a worker killed, a VM gone): stale after 3 s
    assert other.is_stale("p=1", other.scan(["p=1"])["p=1"])
    taken = other.try_claim("p=1", 2)
    assert taken is not None and owner.try_claim("p=1", 2) is None
    with claim.heartbeat(on_lost=lost.append, log=logged.append):  # the old owner was only stalled: it stops
        deadline = time.monotonic() + 10
        while not lost:
            assert time.monotonic() < deadline, "the old owner did not notice the takeover"
            time.sleep(0.05)
    assert lost == [claim] and claim_files(sweep_root, "p=1") == ["1", "2"]


def test_rows_written_by_many_workers_at_once_all_reach_results_csv(sweep_root, tmp_path):
    """Each worker writes its own row object and rebuilds results.csv: racing rebuilds may each miss a
    row, but every row is kept, and the rebuild after the last point has them all."""
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", sweep_root), sweep_root)
    storage.write_text(results.results_path(sweep), "point,status\nold=1,ok\n")  # an older grid's point

    def finish(i):
        row = {"point": NAMES[i], "run.seed": SEEDS[i], "status": "ok", "eval_loss": 1.5 + i / 8,
               "run_dir": sweep.points[i].cfg.run.dir}
        results.write_point_row(sweep, row, attempt=1, start_step=0)
        results.rebuild(sweep)

    race(6, finish)
    rows = results.rebuild(sweep)  # what every worker does once it sees every point finished
    table = read_csv(results.results_path(sweep))
    assert [r["point"] for r in table] == [*NAMES, "old=1"] and set(rows) == {*NAMES, "old=1"}
    assert [float(r["eval_loss"]) for r in table[:6]] == [1.5 + i / 8 for i in range(6)]


# --- bad input: one line, exit 2, nothing damaged --------------------------------------------------------

def sweep_cli(capsys, *args):
    code = main(["sweep", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *args):
    code, out, err = sweep_cli(capsys, *args)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_workers_that_read_different_sweeps_are_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    first = write_sweep(tmp_path / "seeds.yaml", out)
    claim_dir(load_sweep(first))  # a worker of this sweep started here
    recorded = (out / "sweep.json").read_text()

    other_copy = tmp_path / "vm2"  # the same file name on another machine, edited
    other_copy.mkdir()
    edited = write_sweep(other_copy / "seeds.yaml", out, overrides=[*COMMON, "optim.lr=0.01"])
    err = one_line_error(capsys, edited, "--worker")
    assert "workers read different versions of the sweep" in err
    assert repr(first) in err and repr(edited) in err and json.loads(recorded)["hash"] in err

    another = write_sweep(tmp_path / "widths.yaml", out, grid={"product": {"model.d_model": [16, 32]}})
    err = one_line_error(capsys, another, "--worker")
    assert f"sweep dir {out} belongs to another sweep" in err and "give this sweep another --dir" in err
    assert repr(first) in err and repr(another) in err

    assert (out / "sweep.json").read_text() == recorded  # nothing damaged, nothing claimed
    assert sorted(os.listdir(out)) == ["sweep.json"]


def test_an_unsupported_scheme_and_bad_worker_options_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path / "s.yaml", "s3://bucket/sweeps/a")
    err = one_line_error(capsys, sweep, "--worker")
    assert "sweep dir 's3://bucket/sweeps/a': the s3:// scheme is not supported" in err
    assert os.listdir(tmp_path) == ["s.yaml"]  # no local folder named s3:
    good = write_sweep(tmp_path / "good.yaml", tmp_path / "runs")
    assert "--stale-after must be a positive number of seconds" in one_line_error(capsys, good, "--worker",
                                                                                  "--stale-after", "0")
    assert "options of --worker" in one_line_error(capsys, good, "--retry-failed")
    assert not (tmp_path / "runs").exists()


def test_a_missing_bucket_is_one_line_before_anything_is_written(gcs, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", "gs://no-such-bucket-for-pretrax/s")
    err = one_line_error(capsys, sweep, "--worker")
    assert "bucket gs://no-such-bucket-for-pretrax does not exist" in err


def test_the_one_process_sweep_refuses_a_dir_that_workers_are_running(tmp_path, capsys):
    out = tmp_path / "runs"
    sweep = write_sweep(tmp_path / "s.yaml", out)
    live = Claims(str(out), stale_after=300).try_claim(NAMES[2], 1)  # a worker elsewhere trains this point
    err = one_line_error(capsys, sweep)
    assert f"workers are running sweep dir {out} (point {NAMES[2]} on host" in err and "--worker" in err
    assert sorted(os.listdir(out)) == ["claims"]  # nothing trained, nothing written

    code, stdout, _ = sweep_cli(capsys, sweep, "--dry-run")  # the dry run shows who runs what
    assert code == 0
    line = next(line for line in stdout.splitlines() if line.lstrip().startswith(NAMES[2] + " "))
    assert f"running (attempt 1, host {live.content['host']} pid {os.getpid()}, heartbeat" in line
    live.release()
    line = next(line for line in sweep_cli(capsys, sweep, "--dry-run")[1].splitlines()
                if line.lstrip().startswith(NAMES[2] + " "))
    assert "stale (attempt 1" in line and "the next worker takes it over" in line


def test_failed_points_are_not_retried_by_other_workers_until_retry_failed(tmp_path, capsys):
    # valid configs, but 4 and 12 sequences do not split over the 8 data-parallel devices: train() refuses
    out = tmp_path / "runs"
    sweep = write_sweep(tmp_path / "s.yaml", out, grid={"zip": {"train.batch_size": [4, 12]}})
    code, stdout, _ = sweep_cli(capsys, sweep, "--worker")
    assert code == 1 and "(0 ok, 2 failed; rerun with --retry-failed" in stdout
    rows = read_csv(str(out / "results.csv"))
    assert [r["point"] for r in rows] == ["batch_size=4", "batch_size=12"]
    assert all(r["status"].startswith("failed: train.batch_size / train.grad_accum =") for r in rows)
    code, stdout, _ = sweep_cli(capsys, sweep, "--worker")  # another worker: nothing to do
    assert code == 1 and "training in" not in stdout
    assert claim_files(str(out), "batch_size=4") == ["1", "1.failed"]
    code, stdout, _ = sweep_cli(capsys, sweep, "--worker", "--retry-failed")  # each retried once
    assert code == 1 and stdout.count("training in") == 2
    assert claim_files(str(out), "batch_size=4") == ["1", "1.failed", "2", "2.failed"]


# --- on GCS: a two-process worker (one multi-host slice) and a one-process worker share a bucket sweep ------

def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_two_process_worker_and_a_one_process_worker_share_a_sweep_in_a_bucket(gcs, tmp_path):
    """The sweep dir, the claims, every run and results.csv live in the bucket. The two processes of one
    worker (as the hosts of a slice: gloo, 4 devices each) train each of their points together, process 0
    alone claims; the other worker (8 devices) joins once the slice has claimed one."""
    sweep_dir = gcs.make_bucket() + "/sweeps/seeds"
    names = NAMES[:4]
    # one checkpoint per point, at its end: nothing here resumes mid-point (the kill -9 test above does)
    sweep = write_sweep(tmp_path / "seeds.yaml", sweep_dir, grid={"product": {"run.seed": SEEDS[:4]}},
                        overrides=[*COMMON, "train.steps=6", "checkpoint.every=6"])
    port = free_port()
    slice_env = {"XLA_FLAGS": cpu_xla_flags(4), "PRETRAX_COORDINATOR": f"127.0.0.1:{port}",
                 "PRETRAX_NUM_PROCESSES": "2", "PRETRAX_INIT_TIMEOUT": "120"}
    procs = []
    for i in range(2):
        with pytest.MonkeyPatch.context() as env:
            for key, value in {**slice_env, "PRETRAX_PROCESS_ID": str(i)}.items():
                env.setenv(key, value)
            procs.append(start_worker(sweep, tmp_path / f"host{i}.log"))
    try:
        deadline = time.monotonic() + 300
        while not any(claim_files(sweep_dir, n) for n in names):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "the slice claimed nothing"
            time.sleep(0.2)
        procs.append(start_worker(sweep, tmp_path / "single.log"))
        wait_all(procs, timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"{n}.log").read_text() for n in ("host0", "host1", "single")]
    assert [p.returncode for p in procs] == [0, 0, 0], [log[-2000:] for log in logs]

    rows = read_csv(sweep_dir + "/results.csv")
    assert [r["point"] for r in rows] == names and all(r["status"] == "ok" for r in rows)
    assert all(r["run_dir"] == f"{sweep_dir}/{r['point']}" for r in rows)
    owners = {}
    for name in names:
        assert claim_files(sweep_dir, name) == ["1", "1.ok"]  # each point claimed and run once
        owners[name] = json.loads(storage.read_text(f"{sweep_dir}/claims/{name}/1"))["pid"]
        assert checkpoint_steps(f"{sweep_dir}/{name}")[-1] == 6 and step_one_rows(f"{sweep_dir}/{name}") == 1
    slice_points = [n for n, pid in owners.items() if pid == procs[0].pid]
    assert slice_points and set(owners.values()) <= {procs[0].pid, procs[2].pid}  # process 1 never claims
    for name in slice_points:  # trained on the slice's 8 devices over 2 processes
        assert f"{name}: training in" in logs[0] and "on 8 cpu device(s), 2 process(es)" in logs[0]
    assert "[worker" not in logs[1]  # process 1 follows process 0's decisions silently

    collected = cli_in_process("sweep", sweep, "--collect")
    assert collected.returncode == 0 and "(4 ok, 0 not finished)" in collected.stdout, collected.stderr[-2000:]
    assert [r["eval_loss"] for r in read_csv(sweep_dir + "/results.csv")] == [r["eval_loss"] for r in rows]
