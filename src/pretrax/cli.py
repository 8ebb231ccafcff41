"""Command line: `pretrax train | info | generate | tokenizer train | data prepare | inspect | stats`. Thin: parse, call one function, print.

Errors the user can fix (PretraxError) are printed as one line on stderr with
exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


def _quiet_library_logs() -> None:
    """Orbax and absl log routine notices as warnings; a user should see only pretrax's own lines."""
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's C++ notices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrax", description="Pretrain language models with JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, or resume the run in run.dir from its newest checkpoint")
    p.add_argument("config", help="YAML config file (configs/tiny.yaml for the CPU default)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. model.d_model=256")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop after STEP (saving a checkpoint) as if preempted; the schedule still targets train.steps")
    p.add_argument("--no-sample", action="store_true", help="do not print a sample at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="print the derived numbers of a config (parameters, FLOPs, ...)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_info)

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
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--top-p", type=float, default=0.95, help="1.0: off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default=None, help="UL2 mode: R, S or X (or a mode token); the prompt becomes its inputs")
    p.set_defaults(func=cmd_generate)
    return parser


def cmd_train(args) -> int:
    from pretrax import config as config_lib

    cfg = config_lib.load(args.config, args.overrides)
    if args.stop_at is not None and args.stop_at < 1:
        from pretrax.errors import ConfigError

        raise ConfigError(f"--stop-at must be a positive step, got {args.stop_at}")
    from pretrax.parallel.distributed import initialize_from_env

    initialize_from_env()  # a no-op for one process; TPU pods, SLURM or PRETRAX_* variables otherwise
    from pretrax.generate import sample
    from pretrax.train.loop import train

    result = train(cfg, stop_at=args.stop_at)
    if "eval" in result:
        print(f"held-out loss: {result['eval']['eval_loss']:.4f} nats/token")
        print(f"held-out bits per byte: {result['eval']['eval_bits_per_byte']:.4f}")
    else:
        print(f"stopped at step {result['final_step']} of {cfg.train.steps}; run the same command to resume")
    if cfg.train.sample_tokens and not args.no_sample and "eval" in result:
        text = sample(result["setup"], result["params"], result["tokenizer"], "def ",
                      max_new_tokens=cfg.train.sample_tokens, seed=cfg.run.seed)
        print("sample:\n" + "def " + text)
    return 0


def cmd_info(args) -> int:
    from pretrax import config as config_lib
    from pretrax.info import describe

    print(describe(config_lib.load(args.config, args.overrides)))
    return 0


def cmd_generate(args) -> int:
    from pretrax.errors import ConfigError
    from pretrax.generate import load_run, sample

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0 or args.top_k < 0:
        raise ConfigError("--temperature and --top-k must be >= 0")
    cfg, setup, tokenizer, params, step = load_run(args.run_dir)
    text = sample(setup, params, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, mode=args.mode)
    print(args.prompt + text)
    return 0


def cmd_tokenizer_train(args) -> int:
    from pretrax.data.spm_train import train_sentencepiece

    path = train_sentencepiece(args.inputs, vocab_size=args.vocab_size, model_type=args.model_type, out=args.out)
    print(f"wrote {path}")
    return 0


def cmd_data_prepare(args) -> int:
    from pretrax.data.tfds_prepare import prepare

    result = prepare(args.inputs, name=args.name, data_dir=args.data_dir, input_format=args.format,
                     text_field=args.text_field, text_split=args.text_split, eval_percent=args.eval_percent,
                     tokenizer=args.tokenizer)
    print(f"prepared tfds dataset {args.name!r} in {args.data_dir}: {result}")
    tokenizer = f" data.tokenizer={args.tokenizer}" if args.tokenizer else ""
    print(f"train from it with: data.source=tfds data.tfds_name={args.name} data.data_dir={args.data_dir}{tokenizer}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
