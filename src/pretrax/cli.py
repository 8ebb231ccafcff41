"""Command line: `pretrax train | info | bench | generate | score | eval | finetune | checkpoints | compile | sweep | scaling fit | coordcheck | tokenizer train | data prepare | inspect | stats`. Thin: parse, call one function, print.

Errors the user can fix (PretraxError) are printed as one line on stderr with
exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # key=value overrides after an option (`coordcheck C --widths 64,128 k=v`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_library_logs()
    from pretrax.errors import PretraxError

    try:
        return args.func(args) or 0
    except PretraxError as e:
        print(f"pretrax: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("pretrax: interrupted; the newest complete checkpoint is kept", file=sys.stderr)
        return 130
    except OSError as e:  # a path no check above named: unwritable, read-only, under a file, gone
        print(f"pretrax: error: {_describe_os_error(e)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"pretrax: error: a file given is not UTF-8 text ({e.reason} at byte {e.start}); "
              "give UTF-8 text (configs, sweeps and results are YAML or CSV)", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line, the traceback kept in a file for the report
        if os.environ.get("PRETRAX_TRACEBACK"):
            raise
        print(f"pretrax: internal error: {type(e).__name__}: {_first_line(e)}; the traceback is in "
              f"{_save_traceback()} (PRETRAX_TRACEBACK=1 prints it); please report it", file=sys.stderr)
        return 1


def _describe_os_error(e: OSError) -> str:
    path = e.filename if e.filename is not None else "a path"
    why = e.strerror or type(e).__name__
    if isinstance(e, FileExistsError) and os.path.isfile(str(path)):
        why = "it is a file where a directory is needed"
    return f"cannot use {path!r}: {why}; give a path this user can read and write (a directory for outputs)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def _save_traceback() -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="pretrax-traceback-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
    return path


def _quiet_library_logs() -> None:
    """Orbax and absl log routine notices as warnings; a user should see only pretrax's own lines."""
    import logging

    # CRITICAL, not ERROR: a failed checkpoint write is logged by Orbax (absl) and by asyncio ("Task exception was
    # never retrieved") as ERROR tracebacks from several threads; pretrax raises it as one CheckpointError line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    default_hook = sys.unraisablehook

    def hook(args):
        # After a checkpoint read or write fails, TensorStore finishes the other reads/writes once Orbax's event
        # loop has closed, and each reports this here; the failure itself is one CheckpointError line.
        if not (isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "Event loop is closed"):
            default_hook(args)

    sys.unraisablehook = hook
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's C++ notices


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first), exit 2."""

    def error(self, message: str):
        self.exit(2, f"pretrax: error: {self.prog}: {message} (`{self.prog} --help` shows the usage)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="pretrax", description="Pretrain language models with JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, or resume the run in run.dir from its newest checkpoint")
    p.add_argument("config", help="YAML config file (configs/tiny.yaml for the CPU default)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.d_model=256")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after STEP (saving a checkpoint) as if preempted; the schedule still targets train.steps")
    p.add_argument("--no-sample", action="store_true", help="do not print a sample at the end")
    p.add_argument("--allow-data-change", action="store_true",
                   help="resume even though the data section, run.seed or train.batch_size differ from the "
                        "checkpoint's (refused otherwise); recorded in RUN_DIR/config_history.jsonl")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="print the derived numbers of a config (parameters, FLOPs, ...)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="time train steps: step time, tokens/s, TFLOP/s per device, MFU, memory, compile")
    p.add_argument("config", help="YAML config file (benchmarks/configs/ holds tiny, gpt2_small, decoder_1b)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.remat=full")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    p.add_argument("--peak", default=None, metavar="auto|measure|TFLOPS",
                   help="the per-device peak MFU is measured against (sets train.peak)")
    p.add_argument("--compile-only", action="store_true",
                   help="only compile the train step against the state's shapes (allocates no model): compile time")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("tokenizer", help="SentencePiece tokenizers")
    tok = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tok.add_parser("train", help="train a SentencePiece model with pretrax's special tokens")
    t.add_argument("inputs", nargs="+", help="text files or globs, or 'stdlib' for the embedded corpus")
    t.add_argument("--vocab-size", type=int, required=True, help="total ids, the 100 sentinels included")
    t.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    t.add_argument("--out", required=True, help="PATH.model to write")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("data", help="prepare and inspect training data")
    data = p.add_subparsers(dest="data_command", required=True)
    d = data.add_parser("prepare", help="build a tfds dataset (ArrayRecord) from local text or jsonl files")
    d.add_argument("inputs", nargs="+", help="text or .jsonl files or globs")
    d.add_argument("--name", required=True, help="dataset name, then used as data.tfds_name")
    d.add_argument("--data-dir", required=True, help="tfds data_dir to write into (then data.data_dir)")
    d.add_argument("--format", choices=("auto", "text", "jsonl"), default="auto")
    d.add_argument("--text-field", default="text", help="jsonl: the field holding the text")
    d.add_argument("--text-split", choices=("file", "blank_lines"), default="file", help="text: document boundaries")
    d.add_argument("--eval-percent", type=float, default=1.0, help="share of documents put in a validation split")
    d.add_argument("--tokenizer", default=None, metavar="bytes|PATH.model",
                   help="also store each document's token ids from this tokenizer (read instead of the text "
                        "when data.tokenizer is the same)")
    d.add_argument("--overwrite", action="store_true",
                   help="replace a dataset of this name and version (only once the new one is complete)")
    d.set_defaults(func=cmd_data_prepare)
    d = data.add_parser("inspect", help="print training examples decoded, as the model sees them")
    d.add_argument("config")
    d.add_argument("overrides", nargs="*")
    d.add_argument("--examples", type=int, default=4)
    d.set_defaults(func=cmd_data_inspect)
    d = data.add_parser("stats", help="per-denoiser counts, shares, noise density, span and lengths vs the config")
    d.add_argument("config")
    d.add_argument("overrides", nargs="*")
    d.add_argument("--examples", type=int, default=2000)
    d.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    d.set_defaults(func=cmd_data_stats)

    p = sub.add_parser("generate", help="sample a continuation from a run's newest checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="", help="text to continue (a run without a tokenizer: ids such as 5,17,9)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--top-p", type=float, default=0.95, help="1.0: off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default=None, help="UL2 mode: R, S or X (or a mode token); the prompt becomes its inputs. "
                        "Default: the run's S denoiser's mode token, if it has one")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole window for every token (the "
                   "reference) instead of decoding over a KV cache")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="write a run's checkpoint as a transformers model dir (OpenAIGPT, Llama, T5; "
                                      "docs/interop.md)")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--step", type=int, default=None, help="the checkpoint to export (default: the newest)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="make a run dir whose step-0 checkpoint holds a transformers model's weights; "
                                      "`pretrax train RUN_DIR/config.yaml` continues pretraining it")
    p.add_argument("hf_dir")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (data.*, train.*, optim.*, ...)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("score", help="the log-probability of every token of a sequence given the tokens before it")
    p.add_argument("run_dir")
    p.add_argument("--text", help="decoder-only: text, scored as a document (bos + text + eos)")
    p.add_argument("--ids", help="decoder-only: token ids such as 5,17,9, scored as given (the first is context)")
    p.add_argument("--inputs", help="encoder-decoder: the encoder's text ([mode] + inputs + eos)")
    p.add_argument("--targets", help="encoder-decoder: the text scored given the inputs (targets + eos)")
    p.add_argument("--input-ids", help="encoder-decoder: the encoder's token ids, as given")
    p.add_argument("--target-ids", help="encoder-decoder: the target ids scored, as given")
    p.add_argument("--mode", default=None, help="encoder-decoder: UL2 mode (R, S or X, or a mode token) put before "
                   "--inputs")
    p.add_argument("--no-eos", action="store_true", help="leave the eos off the scored text (--text, --targets)")
    p.add_argument("--step", type=int, default=None, help="score with this checkpoint (default: the newest)")
    p.add_argument("--json", action="store_true", help='print {"ids": [...], "logprobs": [...]} (encoder-decoder: '
                   '"input_ids", "target_ids", "logprobs")')
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on lm-eval tasks and zero-shot probes "
                                    "(docs/evaluation.md); --all-steps: every checkpoint, a table and a plot")
    p.add_argument("run_dir")
    p.add_argument("--tasks", default="qa,acceptability,cloze", metavar="T1,T2",
                   help="probes (qa, acceptability, cloze) and lm-eval tasks (evals/: pretrax_cloze, pretrax_mc, "
                        "pretrax_gen, pretrax_zen; or lm-eval's own); default: the probes")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="at most N examples per task")
    p.add_argument("--step", type=int, default=None, help="evaluate this checkpoint (default: the newest)")
    p.add_argument("--all-steps", action="store_true", help="evaluate every checkpoint; write eval.csv, eval.json "
                   "and eval.png (score against step) to --out")
    p.add_argument("--out", default=None, metavar="DIR", help="--all-steps: where the table and plot go "
                   "(default RUN_DIR/eval)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a directory of lm-eval task YAMLs of your own (repeatable)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (rounded up to a multiple "
                   "of the devices)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", help="fine-tune a run's newest checkpoint on a task as GPT-1 (docs/finetune.md)")
    p.add_argument("run_dir", help="a pretrained decoder's run dir")
    p.add_argument("task", help="TASK.yaml: type, JSONL files, labels, hyperparameters (evals/finetune/ has one)")
    p.add_argument("overrides", nargs="*", help="run config overrides for this machine, e.g. mesh.data=1")
    p.add_argument("--out", default=None, metavar="DIR", help="the fine-tuning run dir (default RUN_DIR/finetune/NAME)")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after STEP (saving a checkpoint); the same command again resumes")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sweep", help="run a grid of configs (resumable) into DIR/results.csv; --worker: "
                                     "one of many machines sharing it")
    p.add_argument("sweep", help="sweep YAML: base config, dir, grid (configs/sweeps/ has examples)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--worker", action="store_true",
                      help="be one of any number of workers (other processes or machines) sharing the sweep dir: "
                           "claim a point, train it, take the next, until none is left")
    mode.add_argument("--dry-run", action="store_true",
                      help="validate every point and list them (done, running, to run); run nothing")
    mode.add_argument("--collect", action="store_true",
                      help="write results.csv from the points' run dirs; train nothing")
    p.add_argument("--dir", default=None,
                   help="put the runs and results.csv here (a local path or gs://bucket/path) instead of the sweep's dir")
    p.add_argument("--stale-after", type=float, default=None, metavar="SECONDS",
                   help="with --worker: take over a point whose worker wrote no heartbeat for this long "
                        "(default 300)")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --worker: retry the points that failed before this worker started")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("scaling", help="scaling laws from a sweep's results.csv")
    scaling = p.add_subparsers(dest="scaling_command", required=True)
    s = scaling.add_parser("fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta (Chinchilla approach 3), with "
                                       "bootstrap intervals, compute-optimal N and D, and isoFLOP minima")
    s.add_argument("results", help="results.csv (pretrax sweep writes one; rows whose status is not ok are left out)")
    s.add_argument("--params", default="total", metavar="total|non_embedding",
                   help="which parameter count is N: total (Chinchilla; a plain params column) or non_embedding "
                        "(Kaplan)")
    s.add_argument("--compute", default="6nd", metavar="6nd|measured",
                   help="compute C for the optimum, budgets and isoFLOP groups: 6nd (C = 6·N·D, Chinchilla's "
                        "approximation) or measured (the flops column)")
    s.add_argument("--budgets", default=None, metavar="C1,C2,...",
                   help="training FLOPs to give the compute-optimal N and D for (default: decades over the runs)")
    s.add_argument("--bootstrap", type=int, default=100, metavar="K", help="resamples for the intervals; 0: none")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--plot", metavar="OUT.png", help="also write a figure: runs, fitted law, frontier, isoFLOPs")
    s.set_defaults(func=cmd_scaling_fit)

    p = sub.add_parser("coordcheck", help="muP coordinate check: mean |x| of every layer over a few Adam steps "
                                          "at several widths, sp vs mup; table, PNG and log-log slopes")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--widths", default="128,256,512,1024,2048", help="comma-separated d_model values (multiples "
                   "of model.n_heads; heads stay fixed, head dim and d_ff scale)")
    p.add_argument("--steps", type=int, default=3, help="Adam steps (mean |x| is measured at init and after each)")
    p.add_argument("--seeds", type=int, default=1, help="model seeds averaged per width")
    p.add_argument("--out", default=None, metavar="DIR", help="where coordcheck.{csv,md,png} go (default: "
                   "RUN_DIR/coordcheck)")
    p.add_argument("--json", action="store_true", help='print {"sp": {layer: slope}, "mup": {...}} at the last step')
    p.set_defaults(func=cmd_coordcheck)

    p = sub.add_parser("checkpoints", help="list a run's checkpoints: step, size and whether each verifies",
                       description="List RUN_DIR's checkpoints. A checkpoint verifies when Orbax finished it (a save "
                       "cut short keeps a temporary name and shows as incomplete), its metadata and JSON items parse, "
                       "and every array its metadata names reads back in full with no chunk missing: every byte is "
                       "read once on this host, no model or devices needed. This finds deleted or truncated files, "
                       "not flipped bits (Orbax stores no checksums). Exit 0 when every complete checkpoint "
                       "verifies, 1 when one does not.")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print one JSON object per checkpoint, as a list")
    p.set_defaults(func=cmd_checkpoints)

    p = sub.add_parser("compile", help="compile the train step for a TPU topology on this machine: per-chip memory "
                                       "and FLOPs; exit 0 if it fits, 3 if not")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--topology", required=True, help="Cloud TPU accelerator type, e.g. v5p-256, v5e-16, v4-128, v6e-64")
    p.add_argument("--num-slices", type=int, default=None, metavar="K",
                   help="K slices joined over DCN (sets mesh.dcn_data; default: mesh.dcn_data)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    p.add_argument("--top-buffers", type=int, default=0, metavar="N",
                   help="also list the N largest temporaries live at the memory peak: shape, size, op, source line")
    p.add_argument("--search", action="store_true", help="try meshes, remat, grad_accum and attention backends; "
                   "print the plans that fit, fastest first by a roofline estimate (exit 3 if none fits)")
    for flag, what in (("data", "data ways"), ("fsdp", "fsdp ways"), ("tensor", "tensor ways"),
                       ("expert", "expert ways (an MoE model)"), ("context", "context ways (the sequence split)"),
                       ("remat", "remat policies"), ("grad-accum", "micro-batch counts"),
                       ("attention", "attention backends")):
        p.add_argument(f"--{flag}", default=None, metavar="A,B", help=f"--search: only these {what}")
    p.add_argument("--max-compiles", type=int, default=24, metavar="N", help="--search: at most N plan compiles")
    p.add_argument("--jobs", type=int, default=None, metavar="J",
                   help="--search: J compiles at once, in worker processes (default: CPU cores / 2)")
    p.set_defaults(func=cmd_compile)
    return parser


def cmd_train(args) -> int:
    from pretrax import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)
    if args.stop_at is not None and args.stop_at < 1:
        from pretrax.errors import ConfigError

        raise ConfigError(f"--stop-at must be a positive step, got {args.stop_at}")
    from pretrax.parallel.distributed import initialize_from_env

    initialize_from_env()  # a no-op for one process; TPU pods, SLURM or PRETRAX_* variables otherwise
    from pretrax.generate import default_mode, sample
    from pretrax.train.loop import train

    import jax

    result = train(cfg, stop_at=args.stop_at, allow_data_change=args.allow_data_change)
    say = print if jax.process_index() == 0 else (lambda *a, **k: None)  # on a pod, one worker reports
    if result.preempted:
        from pretrax.train.preemption import PREEMPTED_EXIT_CODE

        say(f"pretrax: preempted at step {result.final_step}; the checkpoint is saved, run the same command "
            "to resume", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if result.evaluated:
        say(f"held-out loss: {result.eval_loss:.4f} nats/token")
        say(f"held-out bits per byte: {result.eval_bits_per_byte:.4f}")
    else:
        # only --stop-at ends a run early; the same command with it would stop again at once
        say(f"stopped at step {result.final_step} of {cfg.train.steps}; run the same command without "
            "--stop-at (or with a later step) to resume")
    if cfg.train.sample_tokens and not args.no_sample and result.evaluated:  # every process samples (collectives)
        text = sample(result.setup, result.params, result.tokenizer, "def ",
                      max_new_tokens=cfg.train.sample_tokens, seed=cfg.run.seed, mode=default_mode(cfg))
        say("sample:\n" + "def " + text)
    return 0


def cmd_info(args) -> int:
    from pretrax import config as config_lib
    from pretrax.info import describe

    print(describe(config_lib.load(args.config, args.overrides)))
    return 0


def cmd_bench(args) -> int:
    import json

    from pretrax import config as config_lib
    from pretrax.parallel.distributed import initialize_from_env

    overrides = list(args.overrides) + ([f"train.peak={args.peak}"] if args.peak is not None else [])
    cfg = config_lib.load(args.config, overrides)
    initialize_from_env()  # every host of a pod runs the same command
    from pretrax.bench import format_bench, run_bench

    result = run_bench(cfg, steps=args.steps, warmup=args.warmup, compile_only=args.compile_only)
    print(json.dumps(result) if args.json else format_bench(result))
    return 0


def cmd_checkpoints(args) -> int:
    import dataclasses
    import json

    from pretrax import storage
    from pretrax.errors import CheckpointError
    from pretrax.train.checkpoint_verify import checkpoint_dir, format_reports, list_steps  # no jax: starts fast

    storage.check_reachable(args.run_dir, "run dir")
    if storage.isfile(args.run_dir):
        raise CheckpointError(f"run dir {args.run_dir!r} is a file; give the run.dir of a training run")
    reports = list_steps(checkpoint_dir(args.run_dir))
    if not reports:
        raise CheckpointError(f"{checkpoint_dir(args.run_dir)} holds no checkpoints; give a run dir that was trained")
    if args.json:
        print(json.dumps([{**dataclasses.asdict(r), "verifies": r.verifies} for r in reports]))
    else:
        print(format_reports(reports))
    return 0 if all(r.verifies for r in reports if r.complete) else 1


def cmd_generate(args) -> int:
    from pretrax.errors import ConfigError
    from pretrax.generate import default_mode, load_run, sample

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 < args.top_p <= 1:  # also refuses nan
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0 <= args.temperature < float("inf"):  # nan or inf would sample from NaN logits
        raise ConfigError(f"--temperature must be a finite number >= 0 (0: greedy), got {args.temperature}")
    if args.top_k < 0:
        raise ConfigError(f"--top-k must be >= 0 (0: off), got {args.top_k}")
    cfg, setup, tokenizer, params, step = load_run(args.run_dir)
    text = sample(setup, params, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                  mode=args.mode or default_mode(cfg), cache=not args.no_cache)
    joiner = "," if getattr(tokenizer, "ids_only", False) and text else ""  # ids: "5,17,9" + "," + "12,44"
    print(args.prompt + joiner + text)
    return 0


def cmd_export(args) -> int:
    from pretrax.interop.hf_export import export

    print(export(args.run_dir, args.out_dir, args.step))
    return 0


def cmd_import(args) -> int:
    from pretrax.interop.hf_import import import_hf

    print(import_hf(args.hf_dir, args.run_dir, args.overrides))
    return 0


def cmd_score(args) -> int:
    import json

    from pretrax.generate import load_run
    from pretrax.score import format_table, score_run

    _, setup, tokenizer, params, _ = load_run(args.run_dir, step=args.step)
    result = score_run(setup, params, tokenizer, text=args.text, ids=args.ids, inputs=args.inputs,
                       targets=args.targets, input_ids=args.input_ids, target_ids=args.target_ids, mode=args.mode,
                       eos=not args.no_eos)
    print(json.dumps(result) if args.json else format_table(result, tokenizer))
    return 0


def cmd_eval(args) -> int:
    import json

    from pretrax.errors import ConfigError
    from pretrax.evaluation.evaluate import evaluate_run, evaluate_steps, format_row

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.all_steps and args.step is not None:
        raise ConfigError("give --step N or --all-steps, not both")
    if args.out is not None and not args.all_steps:
        raise ConfigError("--out is where --all-steps writes its table; give --all-steps too")
    kw = dict(limit=args.limit, include_paths=args.include_path, batch_size=args.batch_size)
    if args.all_steps:
        log = None if args.json else (lambda line: print(line, flush=True))
        rows, paths = evaluate_steps(args.run_dir, tasks, out_dir=args.out, log=log, **kw)
        print(json.dumps(rows) if args.json else "wrote " + ", ".join(paths.values()))
        return 0
    step, metrics = evaluate_run(args.run_dir, tasks, step=args.step, **kw)
    print(json.dumps({"step": step, **metrics}) if args.json else format_row({"step": step, **metrics}))
    return 0


def cmd_finetune(args) -> int:
    from pretrax.errors import ConfigError

    if args.stop_at is not None and args.stop_at < 1:
        raise ConfigError(f"--stop-at must be a positive step, got {args.stop_at}")
    from pretrax.finetune.loop import finetune

    result = finetune(args.run_dir, args.task, args.overrides, out=args.out, stop_at=args.stop_at)
    if result["preempted"]:
        from pretrax.train.preemption import PREEMPTED_EXIT_CODE

        print(f"pretrax: preempted at step {result['final_step']}; the checkpoint is saved, run the same command "
              "to resume", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    if "eval" not in result:
        print(f"stopped at step {result['final_step']} of {result['total_steps']}; run the same command without "
              "--stop-at to resume")
        return 0
    e = result["eval"]
    print(f"validation accuracy: {e['eval_accuracy']:.4f} ({int(e['eval_examples'])} examples) at step "
          f"{result['final_step']}; task loss {e['eval_task_loss']:.4f}, LM loss {e['eval_lm_loss']:.4f}")
    print(f"run dir: {result['out_dir']}")
    return 0


def cmd_coordcheck(args) -> int:
    import json
    import os

    from pretrax import config as config_lib
    from pretrax import storage
    from pretrax.coordcheck import coordcheck, describe, parse_widths, write_outputs

    cfg = config_lib.load(args.config, args.overrides)
    widths = parse_widths(args.widths)
    log = None if args.json else (lambda line: print(line, file=sys.stderr))
    out = args.out or storage.join(cfg.run.dir, "coordcheck")
    storage.check_writable_dir(out, "--out" if args.out else "coordcheck output dir (run.dir/coordcheck)")
    result = coordcheck(cfg, widths, args.steps, seeds=args.seeds, log=log)
    paths = write_outputs(result, out)
    if args.json:
        print(json.dumps(result.slopes()))
    else:
        print(describe(result))
        print("wrote " + ", ".join(paths.values()))
    return 0


def cmd_sweep(args) -> int:
    from pretrax import storage
    from pretrax.errors import ConfigError
    from pretrax.sweeps.grid import load_sweep
    from pretrax.sweeps.runner import DEFAULT_STALE_AFTER_S

    if not args.worker and (args.stale_after is not None or args.retry_failed):
        raise ConfigError("--stale-after and --retry-failed are options of --worker")
    stale_after = DEFAULT_STALE_AFTER_S if args.stale_after is None else args.stale_after
    if not stale_after > 0:
        raise ConfigError(f"--stale-after must be a positive number of seconds, got {args.stale_after:g}")
    sweep = load_sweep(args.sweep, args.dir)  # every point's config is validated before anything runs
    storage.check_writable_dir(sweep.dir, "sweep dir")  # a missing bucket, a path under a file: before any run
    from pretrax.sweeps import runner

    if args.dry_run:
        print(runner.plan(sweep, stale_after))
        return 0
    if args.worker:
        from pretrax.parallel.distributed import initialize_from_env
        from pretrax.sweeps.worker import run_worker

        initialize_from_env()  # on a multi-host slice, all its hosts are one worker
        return run_worker(sweep, stale_after, retry_failed=args.retry_failed)
    if args.collect:
        rows, preempted = runner.collect(sweep), False
    else:
        rows, preempted = runner.run_sweep(sweep)
    if preempted:
        from pretrax.train.preemption import PREEMPTED_EXIT_CODE

        return PREEMPTED_EXIT_CODE
    failed = [p.name for p in sweep.points if rows[p.name]["status"] != "ok"]
    print(f"results: {runner.results_path(sweep)} ({len(sweep.points) - len(failed)} ok, {len(failed)} "
          f"{'not finished' if args.collect else 'failed'})")
    return 1 if failed else 0


def cmd_scaling_fit(args) -> int:
    import json

    from pretrax.errors import ConfigError
    from pretrax.scaling.report import analyse, format_report
    from pretrax.scaling.results import read_points

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    budgets = None
    if args.budgets:
        try:
            budgets = [float(c) for c in args.budgets.split(",")]
        except ValueError:
            raise ConfigError(f"--budgets must be FLOP counts separated by commas, e.g. 1e18,1e19; "
                              f"got {args.budgets!r}") from None
        if not all(c > 0 for c in budgets):
            raise ConfigError(f"--budgets must be positive FLOP counts, got {args.budgets!r}")
    if args.plot:  # before the fit and its bootstrap, not after
        from pretrax import storage

        storage.check_writable_dir(storage.parent(storage.absolute(args.plot)), "--plot's directory")
    points = read_points(args.results, args.params, args.compute)
    report = analyse(points, budgets, resamples=args.bootstrap, seed=args.seed)
    if args.plot:
        from pretrax.scaling.plot import plot_fit

        report["plot"] = plot_fit(points, report, args.plot)
    print(json.dumps(report) if args.json else format_report(report))
    if args.plot and not args.json:
        print(f"plot: {args.plot}")
    return 0


def cmd_tokenizer_train(args) -> int:
    from pretrax import storage
    from pretrax.data.spm_train import train_sentencepiece

    storage.check_writable_dir(storage.parent(storage.absolute(args.out)), "--out's directory")
    path = train_sentencepiece(args.inputs, vocab_size=args.vocab_size, model_type=args.model_type, out=args.out)
    print(f"wrote {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    print("train with it: " + _train_command(f"data.tokenizer={_absolute(path)}", f"run.dir=runs/{stem}"))
    return 0


def _prepared_summary(result: dict) -> str:
    """One line: where the dataset is, its splits' sizes, what was skipped or repaired."""
    splits = " and ".join(f"{n:,} {split}" for split, n in result["splits"].items())
    words = {"empty": "empty", "malformed": "malformed lines", "missing_field": "without the text field",
             "not_string": "with a text that is not a string"}
    left_out = [f"{n:,} {words.get(what, what)}" for what, n in result["skipped"].items() if n]
    if result["invalid_utf8"]:
        left_out.append(f"{result['invalid_utf8']:,} with invalid UTF-8 repaired")
    notes = f" (skipped: {', '.join(left_out)})" if left_out else ""
    tokens = f", token ids from tokenizer {result['tokenizer']}" if result["tokenizer"] is not None else ""
    return (f"prepared tfds dataset {result['name']}:{result['version']} at {result['path']}: "
            f"{splits} documents{tokens}{notes}")


def cmd_data_prepare(args) -> int:
    from pretrax import storage
    from pretrax.data.tfds_prepare import prepare

    storage.check_writable_dir(args.data_dir, "--data-dir")  # before the documents are read and built
    result = prepare(args.inputs, name=args.name, data_dir=args.data_dir, input_format=args.format,
                     text_field=args.text_field, text_split=args.text_split, eval_percent=args.eval_percent,
                     tokenizer=args.tokenizer, overwrite=args.overwrite)
    print(_prepared_summary(result))
    overrides = ["data.source=tfds", f"data.tfds_name={args.name}", f"data.data_dir={_absolute(args.data_dir)}"]
    if args.tokenizer:  # the stored ids are read only when data.tokenizer is the same tokenizer
        overrides.append(f"data.tokenizer={args.tokenizer if args.tokenizer == 'bytes' else _absolute(args.tokenizer)}")
    held = "its validation split" if "validation" in result["splits"] else "data.heldout_percent of train"
    print(f"train from it (evaluating on {held}) with: " + _train_command(*overrides, f"run.dir=runs/{args.name}"))
    return 0


def _absolute(path: str) -> str:
    """A local path as an absolute one (~ expanded), so a printed command works from any directory; URLs as given."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _train_command(*overrides: str) -> str:
    """A `pretrax train` command line a user can paste: the tiny CPU config (from here when present) + overrides.

    A fresh run.dir among the overrides keeps it from resuming another run's checkpoints (runs/tiny).
    """
    import shlex

    config = "configs/tiny.yaml"
    checkout = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, config)  # an editable install's
    if not os.path.isfile(config) and os.path.isfile(checkout):
        config = os.path.abspath(checkout)
    return shlex.join(["pretrax", "train", config, *overrides])


def cmd_data_inspect(args) -> int:
    from pretrax import config as config_lib
    from pretrax.data.inspect import describe_examples
    from pretrax.errors import ConfigError

    if args.examples < 1:
        raise ConfigError(f"--examples must be >= 1, got {args.examples}")
    print(describe_examples(config_lib.load(args.config, args.overrides), args.examples))
    return 0


def cmd_data_stats(args) -> int:
    import json

    from pretrax import config as config_lib
    from pretrax.data.stats import collect_stats, format_stats
    from pretrax.errors import ConfigError

    if args.examples < 1:
        raise ConfigError(f"--examples must be >= 1, got {args.examples}")
    stats = collect_stats(config_lib.load(args.config, args.overrides), args.examples)
    print(json.dumps(stats) if args.json else format_stats(stats))
    return 0


def cmd_compile(args) -> int:
    import json

    # the host side of an ahead-of-time compile needs only the CPU; without this a machine with
    # libtpu but no TPU first tries, noisily, to open a TPU
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from pretrax import config as config_lib
    from pretrax.compile import compile_for_topology, exit_code, format_report
    from pretrax.errors import PretraxError

    restricted = [f for f in ("data", "fsdp", "tensor", "expert", "context", "remat", "grad_accum", "attention")
                  if getattr(args, f)]
    if restricted and not args.search:
        raise PretraxError(f"--{restricted[0].replace('_', '-')} restricts a --search; add --search")
    if args.top_buffers < 0 or (args.top_buffers and args.search):
        raise PretraxError("--top-buffers N needs N >= 1 and no --search")
    if args.search:
        from pretrax import compile_search as cs

        space = cs.parse_space(args.data, args.fsdp, args.tensor, args.remat, args.grad_accum, args.attention,
                               args.expert, args.context)
        found = cs.search(config_lib.load(args.config, args.overrides), args.topology, args.num_slices, space,
                          args.max_compiles, args.jobs)
        print(json.dumps(found) if args.json else cs.format_search(found))
        return cs.exit_code(found)
    report = compile_for_topology(config_lib.load(args.config, args.overrides), args.topology, args.num_slices,
                                  top_buffers=args.top_buffers)
    print(json.dumps(report) if args.json else format_report(report))
    return exit_code(report)


if __name__ == "__main__":
    sys.exit(main())
