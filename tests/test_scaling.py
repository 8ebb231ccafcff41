"""pretrax scaling fit: recover the published Chinchilla law from points drawn from it; isoFLOP minima; one
definition of N and of compute C per report; bad input."""

import csv
import json
import math

import numpy as np
import pytest

from pretrax.cli import main
from pretrax.scaling.fit import Law, fit_law
from pretrax.scaling.isoflop import group_by_flops, isoflop_fit

CHINCHILLA = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, approach 3


def grid_runs():
    """7 x 7 runs: 10M..10B parameters x 1B..1T tokens (Chinchilla's runs span about 70M..16B x 5B..500B)."""
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, 7), np.geomspace(1e9, 1e12, 7))
    return N.ravel(), D.ravel()


def test_recovers_the_law_exactly_without_noise():
    N, D = grid_runs()
    law = fit_law(N, D, CHINCHILLA.loss(N, D)).law
    for key, true in CHINCHILLA.as_dict().items():
        assert getattr(law, key) == pytest.approx(true, rel=1e-4), key


def test_recovers_the_law_from_noisy_runs():
    """0.5% multiplicative noise on each loss (seeded). Tolerances, from the spread over 12 seeds (max error in
    brackets): E +-0.08 (0.056), alpha +-0.015 (0.006), beta +-0.03 (0.021), A within 25% (11%), B within 2x
    (49%: B and beta trade off along a long valley), N_opt at 1e23 FLOPs within 20% (12%). A fit that swapped the
    exponents, dropped E or ignored either term fails them."""
    N, D = grid_runs()
    rng = np.random.default_rng(0)
    L = CHINCHILLA.loss(N, D) * np.exp(rng.normal(0.0, 0.005, N.shape))
    fit = fit_law(N, D, L)
    law = fit.law
    assert abs(law.E - 1.69) <= 0.08
    assert abs(law.alpha - 0.34) <= 0.015
    assert abs(law.beta - 0.28) <= 0.03
    assert abs(math.log(law.A / 406.4)) <= math.log(1.25)
    assert abs(math.log(law.B / 410.7)) <= math.log(2.0)
    assert law.optimal(1e23)[0] == pytest.approx(CHINCHILLA.optimal(1e23)[0], rel=0.2)
    assert 0.003 < fit.rms_log_residual < 0.006  # down to the noise, no further
    assert fit.undetermined == ()


def test_a_term_the_runs_do_not_show_is_flagged(tmp_path, capsys):
    """Losses that depend on D only: the fit cannot know alpha, and says so instead of reporting it plainly."""
    N, D = grid_runs()
    L = 2.0 + 300.0 / D**0.3
    assert fit_law(N, D, L).undetermined == ("alpha",)
    path = write_results(tmp_path / "r.csv", N, D, 6 * N * D, L)
    assert main(["scaling", "fit", path, "--bootstrap", "0"]) == 0
    assert "warning: the runs do not determine alpha" in capsys.readouterr().out
    # and losses with no floor: E falls to its bound instead of to exp(-inf)
    assert "E" in fit_law(N, D, 406.4 / N**0.34 + 410.7 / D**0.28).undetermined


def test_compute_optimal_allocation_is_the_closed_form():
    n_opt, d_opt = CHINCHILLA.optimal(np.array([1e21, 1e24]))
    assert n_opt * d_opt * 6 == pytest.approx([1e21, 1e24])
    # at the optimum, no other split of the same compute has a lower loss
    for C, n in zip((1e21, 1e24), n_opt):
        trial = n * np.geomspace(0.5, 2.0, 41)
        assert np.argmin(CHINCHILLA.loss(trial, C / (6 * trial))) == 20


def isoflop_runs(noise=0.0, seed=0):
    """7 sizes around the law's optimum at each of 3 budgets, FLOPs jittered by up to 5% within a budget."""
    rng = np.random.default_rng(seed)
    N, C = [], []
    for budget in (1e19, 1e20, 1e21):
        for n in CHINCHILLA.optimal(budget)[0] * np.geomspace(1 / 8, 8, 7):
            N.append(n)
            C.append(budget * (1 + 0.05 * rng.random()))
    N, C = np.array(N), np.array(C)
    D = C / (6 * N)
    return N, D, C, CHINCHILLA.loss(N, D) * np.exp(rng.normal(0.0, noise, N.shape))


def test_isoflop_minima_follow_the_law():
    N, _, C, L = isoflop_runs()
    iso = isoflop_fit(N, C, L)
    assert len(iso.budgets) == 3 and all(b.sizes == 7 and b.inside for b in iso.budgets)
    for b in iso.budgets:
        # a parabola in log N is close to, not exactly, the law's profile: within 10%
        assert b.n_opt == pytest.approx(CHINCHILLA.optimal(b.flops)[0], rel=0.1)
    assert iso.exponent == pytest.approx(0.28 / (0.34 + 0.28), abs=0.02)


def test_group_by_flops_joins_runs_within_ten_percent():
    groups = group_by_flops(np.array([1e18, 1.05e18, 1.2e18, 1e19, 1.09e19, 5.0]))
    assert [sorted(g.tolist()) for g in groups] == [[5], [0, 1], [2], [3, 4]]


def write_results(path, N, D, C, L, extra=()):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["point", "params", "params_non_embedding", "tokens", "flops", "eval_loss", "status"])
        for i, row in enumerate(zip(N, D, C, L)):
            n, d, c, loss = row
            w.writerow([f"p{i}", int(n * 1.2), int(n), int(d), c, loss, "ok"])
        for row in extra:
            w.writerow(row)
    return str(path)


@pytest.mark.slow  # 3.5 s, most of it matplotlib drawing the plot
def test_cli_json_and_plot(tmp_path, capsys):
    N, D, C, L = isoflop_runs(noise=0.002)
    failed = [["bad", 1000, 900, 10, 6e4, "", "failed: boom"]]
    path = write_results(tmp_path / "results.csv", N, D, C, L, failed)
    png = tmp_path / "fig" / "fit.png"
    assert main(["scaling", "fit", path, "--json", "--bootstrap", "8", "--budgets", "1e21,1e23",
                 "--plot", str(png), "--params", "non_embedding"]) == 0  # Kaplan's N, still available
    report = json.loads(capsys.readouterr().out)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert isinstance(report[key], float)
        lo, hi = report["intervals"][key]
        assert lo <= hi
    assert report["fit"]["runs"] == 21 and report["fit"]["skipped_not_ok"] == 1
    assert report["fit"]["params_column"] == "params_non_embedding"
    law = Law(*(report[k] for k in ("E", "A", "B", "alpha", "beta")))
    assert [o["flops"] for o in report["optimal"]] == [1e21, 1e23]
    for o in report["optimal"]:
        n, d = law.optimal(o["flops"])
        assert (o["params"], o["tokens"]) == pytest.approx((n, d)) and o["loss"] == pytest.approx(law.loss(n, d))
    assert len(report["isoflop"]["budgets"]) == 3
    assert report["isoflop"]["exponent"] == pytest.approx(0.4516, abs=0.03)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_cli_text_report_and_total_params(tmp_path, capsys):
    N, D = grid_runs()
    path = write_results(tmp_path / "r.csv", N, D, 6 * N * D, CHINCHILLA.loss(N, D))
    assert main(["scaling", "fit", path, "--bootstrap", "0"]) == 0  # total parameters by default (Chinchilla)
    out = capsys.readouterr().out
    assert "49 runs (N = total parameters, the params column; D = tokens)" in out
    assert "alpha = 0.34" in out  # total = 1.2 x non-embedding only rescales A
    assert "isoFLOP (approach 2, runs grouped by C = 6ND)" in out


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (["point", "tokens", "status"], [["a", 1, "ok"]],
         "lacks the column(s) params, eval_loss"),
        (None, [[f"p{i}", 10 * (i + 1), 10 * (i + 1), 1000 * (i + 1), 1.0, 3.0, "ok"] for i in range(4)]
         + [["f", 1, 1, 1, 1, "", "failed: x"]] * 3,
         "has 4 finished run(s) (status ok); fitting L = E + A/N^alpha + B/D^beta needs at least 5"),
        (None, [[f"p{i}", 10, 10, 1000 * i, 1.0, 3.0, "ok"] for i in range(6)],
         "line 2: tokens is '0'; it must be a positive number"),
        (None, [[f"p{i}", 10, 10, 1000 * (i + 1), 1.0, "-3" if i == 2 else 3.0, "ok"] for i in range(6)],
         "line 4: eval_loss is '-3'; it must be a positive number"),
        (None, [[f"p{i}", 10, 10, 1000 * (i + 1), 1.0, 3.0, "ok"] for i in range(6)],
         "need at least 2 different params and 2 different tokens values"),
    ],
)
def test_bad_results_are_one_line_errors(tmp_path, capsys, header, rows, message):
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or ["point", "params", "params_non_embedding", "tokens", "flops", "eval_loss", "status"])
        w.writerows(rows)
    assert main(["scaling", "fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_budgets(tmp_path, capsys):
    assert main(["scaling", "fit", str(tmp_path / "none.csv"), "--budgets", "1e18,lots"]) == 2
    assert "--budgets must be FLOP counts separated by commas" in capsys.readouterr().err
    assert main(["scaling", "fit", str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


EPOCH = Law(E=1.82, A=482.0, B=2085.4, alpha=0.3478, beta=0.3658)  # Epoch AI's refit: a law the fitter never saw


@pytest.mark.parametrize("compute, k", [("6nd", 6.0), ("measured", 8.0)])
def test_one_definition_of_compute_throughout_a_report(tmp_path, capsys, compute, k):
    """Runs around EPOCH's optimum whose flops column is 8·N·D (attention and the rest on top of 6ND). Under each
    --compute the fit recovers the law, and the optimum, the default budgets and the isoFLOP groups share one C:
    approach 3's N_opt at each isoFLOP budget then agrees with that budget's parabola. Mixing 6ND for the optimum
    with the flops column for the groups (the old report) misses it by (8/6)^(beta/(alpha+beta)) ~ 15%."""
    N, D = [], []
    for c6 in (1e19, 1e20, 1e21):  # budgets in 6ND
        for n in EPOCH.optimal(c6)[0] * np.geomspace(1 / 8, 8, 7):
            N.append(n)
            D.append(c6 / (6 * n))
    N, D = np.array(N), np.array(D)
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["params", "tokens", "flops", "eval_loss"])
        w.writerows(zip(N, D, 8.0 * N * D, EPOCH.loss(N, D)))
    assert main(["scaling", "fit", str(path), "--json", "--bootstrap", "0", "--compute", compute]) == 0
    r = json.loads(capsys.readouterr().out)
    law = Law(*(r[key] for key in ("E", "A", "B", "alpha", "beta")))
    for key, true in EPOCH.as_dict().items():
        assert getattr(law, key) == pytest.approx(true, rel=1e-3), key
    assert r["compute"]["convention"] == compute and r["compute"]["flops_per_param_token"] == pytest.approx(k)
    C = k * N * D
    assert [o["flops"] for o in r["optimal"]] == [10.0**e for e in range(math.ceil(math.log10(C.min())),
                                                                          math.floor(math.log10(C.max())) + 3)]
    for o in r["optimal"]:
        assert k * o["params"] * o["tokens"] == pytest.approx(o["flops"])
    budgets = r["isoflop"]["budgets"]
    assert [b["flops"] for b in budgets] == pytest.approx([k / 6 * c for c in (1e19, 1e20, 1e21)])
    for b in budgets:
        assert law.optimal(b["flops"], k)[0] == pytest.approx(b["params_opt"], rel=0.07)
    capsys.readouterr()
    assert main(["scaling", "fit", str(path), "--bootstrap", "0", "--compute", compute]) == 0
    text = capsys.readouterr().out
    symbol = "6ND" if compute == "6nd" else "measured FLOPs"
    assert f"compute: {r['compute']['definition']}, for the optimum, the budgets and the isoFLOP groups" in text
    assert f"compute-optimal (C = {symbol})" in text and f"runs grouped by C = {symbol}" in text
    assert ("C = 6·N·D" in text) == (compute == "6nd") and ("flops column" in text) == (compute == "measured")


def test_a_plain_params_column_fits_as_total_parameters(tmp_path, capsys):
    N, D = grid_runs()
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["params", "tokens", "eval_loss"])  # no flops, no status, no non-embedding count
        w.writerows(zip(N.astype(int), D.astype(int), CHINCHILLA.loss(N, D)))
    assert main(["scaling", "fit", str(path), "--bootstrap", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["fit"]["params"] == "total" and r["fit"]["params_column"] == "params"
    assert r["alpha"] == pytest.approx(0.34, rel=1e-3) and r["compute"]["convention"] == "6nd"
    # a convention the file cannot give: one line, exit 2
    assert main(["scaling", "fit", str(path), "--compute", "measured"]) == 2
    assert main(["scaling", "fit", str(path), "--params", "non_embedding"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no flops column for --compute measured" in err[0]
    assert "lacks the column(s) params_non_embedding" in err[1]


@pytest.mark.parametrize("flag, message", [
    (["--params", "embedding"], "--params must be one of total, non_embedding"),
    (["--compute", "7nd"], "--compute must be one of 6nd, measured"),
])
def test_bad_conventions_are_one_line_errors_and_write_nothing(tmp_path, capsys, flag, message):
    N, D, C, L = isoflop_runs()
    path = write_results(tmp_path / "results.csv", N, D, C, L)
    png = tmp_path / "fit.png"
    assert main(["scaling", "fit", path, "--plot", str(png), *flag]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and len(captured.err.strip().splitlines()) == 1 and captured.out == ""
    assert not png.exists()
