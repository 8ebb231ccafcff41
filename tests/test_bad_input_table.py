"""Every bad input a user can give, in one table: the command, its exit code, and the one line it must print.

Each row runs the real CLI entry point (pretrax.cli.main) in this process: the
same code path as the `pretrax` command, which turns every PretraxError into
one stderr line and exit 2 with no traceback (tests/test_cli.py runs a few of
these as real subprocesses, and checks nothing written is damaged).
"""

import pytest

from pretrax.cli import main

TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=4", "model.d_ff=64", "data.seq_len=32",
        "train.batch_size=8", "train.steps=2"]
UL2 = ["data.objective=ul2", "data.seq_len=64"]
ONE_DENOISER = "data.denoisers=[{{kind: span, mean_span: {mu}, noise_density: {r}, weight: {w}}}]"

CASES = [
    # config schema (foundation issue)
    ("unknown key", ["train", "configs/tiny.yaml", "model.d_modle=64"], 2, "did you mean 'model.d_model'"),
    ("wrong type", ["train", "configs/tiny.yaml", "model.d_model=wide"], 2, "'model.d_model' expects int"),
    ("bad choice", ["train", "configs/tiny.yaml", "model.kind=encoder"], 2, "must be one of 'decoder', 'encoder_decoder'"),
    ("missing config file", ["train", "configs/nope.yaml"], 2, "config file 'configs/nope.yaml' does not exist"),
    ("override without =", ["train", "configs/tiny.yaml", "model.d_model"], 2, "must look like key=value"),
    ("heads do not divide width", ["info", "configs/tiny.yaml", "model.d_model=100", "model.n_heads=3"], 2,
     "must be divisible by model.n_heads"),
    ("bad nan policy", ["train", "configs/tiny.yaml", "train.nan_policy=ignore"], 2,
     "'train.nan_policy' must be one of 'stop', 'skip', 'rollback'"),
    ("bad MFU peak", ["train", "configs/tiny.yaml", "train.peak=fast"], 2,
     "train.peak must be 'auto', 'measure' or a positive number"),
    ("mesh does not match devices", ["train", "configs/tiny.yaml", *TINY, "mesh.data=3"], 2,
     "has 3 devices but 8 are available"),
    ("batch not divisible", ["train", "configs/tiny.yaml", *TINY, "train.batch_size=6"], 2,
     "not divisible by the data-parallel size 8"),
    ("stop-at zero", ["train", "configs/tiny.yaml", "--stop-at", "0"], 2, "--stop-at must be a positive step"),
    # values that pass a type check but cannot train (issue 20): NaN and inf in any float setting, Adam's ranges
    ("infinite learning rate", ["train", "configs/tiny.yaml", "optim.lr=inf"], 2,
     "config key 'optim.lr' must be a finite number, got inf"),
    ("NaN weight decay", ["train", "configs/tiny.yaml", "optim.weight_decay=nan"], 2,
     "config key 'optim.weight_decay' must be a finite number, got nan"),
    ("infinite clip norm", ["train", "configs/tiny.yaml", "optim.clip_norm=.inf"], 2,
     "config key 'optim.clip_norm' must be a finite number, got inf"),
    ("NaN held-out share", ["train", "configs/tiny.yaml", "data.heldout_percent=nan"], 2,
     "config key 'data.heldout_percent' must be a finite number, got nan"),
    ("NaN in a mixture weight", ["train", "configs/tiny.yaml", "data.mixture=[{source: stdlib, weight: .nan}]"], 2,
     "config key 'data.mixture[0].weight' must be a finite number, got nan"),
    ("NaN MFU peak", ["train", "configs/tiny.yaml", "train.peak=nan"], 2,
     "train.peak must be 'auto', 'measure' or a positive number of TFLOP/s, got 'nan'"),
    ("Adam b1 above 1", ["train", "configs/tiny.yaml", "optim.b1=2"], 2, "config key 'optim.b1' must be in [0, 1), got 2.0"),
    ("Adam b2 of 1", ["train", "configs/tiny.yaml", "optim.b2=1"], 2, "config key 'optim.b2' must be in [0, 1), got 1.0"),
    ("negative Adam b1", ["train", "configs/tiny.yaml", "optim.b1=-0.1"], 2, "'optim.b1' must be in [0, 1), got -0.1"),
    ("Adam eps zero", ["train", "configs/tiny.yaml", "optim.eps=0"], 2, "config key 'optim.eps' must be > 0"),
    ("zero learning rate", ["train", "configs/tiny.yaml", "optim.lr=0"], 2, "config key 'optim.lr' must be > 0, got 0.0"),
    ("zero rope theta", ["train", "configs/tiny.yaml", "model.rope_theta=0"], 2, "'model.rope_theta' must be > 0"),
    ("info refuses them too", ["info", "configs/tiny.yaml", "optim.eps=-inf"], 2,
     "config key 'optim.eps' must be a finite number, got -inf"),
    # data (data issue)
    ("missing tokenizer model", ["train", "configs/tiny.yaml", *TINY, "data.tokenizer=/nonexistent/spm.model"], 2,
     "/nonexistent/spm.model"),
    ("missing text files", ["train", "configs/tiny.yaml", *TINY, "data.source=text", "data.paths=[/nonexistent/*.txt]"],
     2, "/nonexistent/*.txt"),
    # start-up checks (issue 20; tests/test_startup_checks.py has each case): refused before any write or compile
    ("one document cannot be split", ["train", "configs/tiny.yaml", *TINY, "data.source=text", "data.paths=[README.md]"],
     2, "none of the 1 document(s) of text:README.md; held-out documents are chosen per document by a hash of its "
        "name, so a run needs at least 2: add files to data.paths, or set data.text_split=blank_lines"),
    ("nothing held out", ["train", "configs/tiny.yaml", *TINY, "data.source=text", "data.paths=[docs/*.md]",
                          "data.heldout_percent=0"], 2, "data.heldout_percent=0 holds out none of the"),
    ("model vocab below the tokenizer's", ["train", "configs/tiny.yaml", *TINY, "model.vocab_size=256"], 2,
     "model.vocab_size (256) is smaller than the tokenizer's 362 ids (262 ordinary + data.num_sentinels=100 "
     "sentinels); use 0 (automatic) or a larger value"),
    # UL2 (UL2 issue)
    ("noise density out of range", ["train", "configs/tiny.yaml", *TINY, *UL2,
                                    ONE_DENOISER.format(mu=3, r=1.5, w=1)], 2, "noise_density must be in (0, 1)"),
    ("mean span below 1", ["train", "configs/tiny.yaml", *TINY, *UL2, ONE_DENOISER.format(mu=0.5, r=0.15, w=1)], 2,
     "mean_span must be >= 1"),
    ("weights sum to zero", ["train", "configs/tiny.yaml", *TINY, *UL2, ONE_DENOISER.format(mu=3, r=0.15, w=0)], 2,
     "sum to a positive number"),
    ("sequence too short for a denoiser", ["train", "configs/tiny.yaml", *TINY, "data.objective=ul2"], 2,
     "data.seq_len=32 is too short for data.denoisers[1] (R, mean_span=8, noise_density=0.15): it needs data.seq_len >= 54"),
    ("encoder rows too short", ["train", "configs/ul2_tiny_encdec.yaml", "data.inputs_len=300"], 2,
     "it needs data.inputs_len >= 363 and data.targets_len >= 66"),
    ("causal LM for an encoder-decoder", ["train", "configs/ul2_tiny_encdec.yaml", "data.objective=causal_lm",
                                          "data.denoisers=[]"], 2, "causal_lm has no inputs for an encoder"),
    ("mode token the tokenizer lacks", ["train", "configs/tiny.yaml", *TINY, *UL2,
                                        "data.denoisers=[{kind: prefix, mode_token: '[XYZ]'}]"], 2,
     "mode_token '[XYZ]'"),
    # attention backends (speed issue)
    ("cuDNN attention on a CPU", ["train", "configs/tiny.yaml", *TINY, "model.attention=cudnn"], 2,
     "model.attention=cudnn needs a GPU (this run's devices are cpu); valid here: xla, splash, ring"),
    ("splash with the T5 position bias", ["train", "configs/ul2_tiny_encdec.yaml", "model.attention=splash"], 2,
     "model.attention=splash cannot add the T5 relative position bias"),
    ("attention dropout with ring attention", ["train", "configs/tiny.yaml", *TINY, "model.attention=ring",
                                                "model.dropout=0.1"], 2,
     "model.dropout drops attention probabilities, which model.attention=ring never forms whole"),
    ("splash with lengths its tiles do not divide", ["train", "configs/tiny.yaml", *TINY, "model.attention=splash"], 2,
     "model.attention=splash needs sequence lengths divisible by 128"),
    # using a run
    ("generate from a missing run", ["generate", "/nonexistent/run"], 2, "run dir '/nonexistent/run' does not exist"),
    ("generate at NaN temperature", ["generate", "/nonexistent/run", "--temperature", "nan"], 2,
     "--temperature must be a finite number >= 0 (0: greedy), got nan"),
    ("generate at infinite temperature", ["generate", "/nonexistent/run", "--temperature", "inf"], 2,
     "--temperature must be a finite number >= 0 (0: greedy), got inf"),
    ("generate with NaN top-p", ["generate", "/nonexistent/run", "--top-p", "nan"], 2, "--top-p must be in (0, 1], got nan"),
    ("data stats of nothing", ["data", "stats", "configs/tiny.yaml", "--examples", "0"], 2, "--examples"),
]


@pytest.mark.parametrize("argv, code, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_its_exit_code(argv, code, message, capsys, tmp_path):
    if argv[0] == "train":
        argv = argv[:2] + [f"run.dir={tmp_path / 'run'}"] + argv[2:]
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pretrax: error: "), err
    assert message in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written
