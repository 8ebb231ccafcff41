"""`pretrax data stats`: per-denoiser statistics measured on real packed training batches.

``collect_stats(cfg, examples)`` reads ``make_train_iterator(cfg)`` until
``examples`` examples (packed segments) have been seen and measures, per
denoiser (the ``denoiser`` feature), exactly what the model sees:

* an example is one segment (``segment_ids == s`` in a row);
* its *inputs* are the tokens with ``bidirectional == 1`` (``batch["inputs"]``
  there: the mode token, when the denoiser has one, included); for the
  encoder-decoder, the encoder segment's tokens without their final eos
  (data/batch_examples.py);
* its *targets* are ``batch["targets"]`` where ``loss_mask == 1`` (sentinels
  and the final eos included);
* span denoisers (R/X): noise tokens = targets that are neither a sentinel nor
  the final eos; spans = sentinels in the inputs; raw tokens = inputs without
  the mode token and sentinels, plus the noise tokens. Noise density = noise /
  raw, mean span = noise / spans (both token-weighted over all examples: sums
  over examples divided, so what the model sees on average);
* S (prefix): the "noise density" is the target share of the raw segment,
  (targets - eos) / raw; a uniform split point makes it 0.5 on average.

Next to the measured values are the configured ones (weight share, noise
density, mean span) and, for span denoisers, ``expected_*``: what the
objective's count rule (``span_counts``: rounding, at least one span) gives for
the raw lengths actually measured. ``mean_raw_length`` (and
``full_length_share``) set against the configured ``raw_length`` show whether
examples are cut at the denoiser's designed length: always, with documents
concatenated (``data.concat_documents``, the default); per document, short
documents and each document's last piece make short segments, with rounded
counts (at least one noise token, at least one span), so measured values differ
from the configured ones by more than rounding. Measured values match
``expected_*`` exactly when the batches hold what the objective built.

``padding_fraction`` is the share of ``segment_ids == 0`` tokens over every
batch read (encoder-decoder: of the decoder rows; ``encoder_padding_fraction``
for the encoder rows). For ``causal_lm`` there are no denoisers: the stats hold only
lengths (one "causal" entry: inputs = tokens, targets = loss tokens) and padding.

``json.dumps(stats)`` is the ``--json`` form: per-denoiser entries are keyed by
their index (as a string, the ``denoiser`` feature value).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pretrax.config import Config
from pretrax.data.batch_examples import packed_examples
from pretrax.data.objectives import denoiser_names, denoisers, span_counts, with_sentinels
from pretrax.data.pipeline import make_train_iterator, objective_for
from pretrax.data.tokenizer import config_tokenizer
from pretrax.sizes import encoder_decoder_lengths


def _sentinel_ids(tokenizer) -> np.ndarray:
    n = getattr(tokenizer, "num_sentinels", None)
    ids, k = [], 0
    while n is None or k < n:
        try:
            ids.append(int(tokenizer.sentinel_id(k)))
        except ValueError:
            break
        k += 1
    return np.asarray(ids, np.int64)


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def _params(d) -> str:
    if d.kind == "prefix":
        return "prefix"
    return f"mu={d.mean_span:g}, r={d.noise_density:g}"


def collect_stats(cfg: Config, examples: int) -> dict[str, Any]:
    """Per-denoiser counts, shares, noise density, mean span, lengths and padding over ``examples`` packed examples."""
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}")
    data = cfg.data
    dens = denoisers(data)
    names = denoiser_names(data)
    tokenizer = config_tokenizer(data)
    sentinels = _sentinel_ids(with_sentinels(tokenizer, data.num_sentinels))
    eos = int(tokenizer.eos_id)
    modes = [int(tokenizer.mode_token_id(d.mode_token)) if d.mode_token else None for d in dens]
    causal = data.objective == "causal_lm"
    n_slots = 1 if causal else len(dens)
    keys = ("count", "inputs", "targets", "tokens", "noise", "raw", "spans", "expected_noise", "expected_spans", "full")
    acc: list[dict[str, Any]] = [{**dict.fromkeys(keys, 0), "density_sum": 0.0} for _ in range(n_slots)]
    raw_full = [] if causal else objective_for(cfg, tokenizer).raw_lengths  # a full segment's raw length

    it = make_train_iterator(cfg)
    seen = pad = total = batches = enc_pad = enc_total = 0
    try:
        while seen < examples:
            batch = next(it)
            batches += 1
            seg_ids = batch["segment_ids"]
            pad += int((seg_ids == 0).sum())
            total += seg_ids.size
            if "encoder_segment_ids" in batch:
                enc_pad += int((batch["encoder_segment_ids"] == 0).sum())
                enc_total += batch["encoder_segment_ids"].size
            for ex in packed_examples(batch):
                if seen == examples:
                    break
                inputs, targets, i = ex.inputs, ex.targets, ex.denoiser
                a = acc[i]
                a["count"] += 1
                a["inputs"] += ex.tokens if causal else len(inputs)  # causal: every token is an input
                a["targets"] += len(targets)
                a["tokens"] += ex.tokens
                seen += 1
                if causal:
                    continue
                d = dens[i]
                body = inputs[1:] if modes[i] is not None and len(inputs) and inputs[0] == modes[i] else inputs
                ends_eos = len(targets) > 0 and targets[-1] == eos
                if d.kind == "prefix":
                    noise, spans = len(targets) - int(ends_eos), 0
                else:
                    spans = int(np.isin(body, sentinels).sum())
                    noise = len(targets) - int(np.isin(targets, sentinels).sum()) - int(ends_eos)
                raw = len(body) - spans + noise
                a["noise"] += noise
                a["spans"] += spans
                a["raw"] += raw
                a["density_sum"] += noise / raw if raw else 0.0
                a["full"] += int(raw == raw_full[i])
                if d.kind == "span" and raw >= 2:
                    en, es = span_counts(raw, d.noise_density, d.mean_span)
                    a["expected_noise"] += en
                    a["expected_spans"] += es
    finally:
        it.close()

    if causal:
        a = acc[0]
        per = {"0": {"name": "causal", "params": "next-token prediction, no denoisers",
                     "configured": {}, "measured": _lengths(a, seen)}}
    else:
        wsum = sum(float(d.weight) for d in dens)
        per = {}
        for i, (d, name, a) in enumerate(zip(dens, names, acc)):
            share = float(d.weight) / wsum
            configured: dict[str, Any] = {
                "kind": d.kind, "weight": float(d.weight), "share": share,
                "mode_token": d.mode_token, "raw_length": raw_full[i],
                "noise_density": float(d.noise_density) if d.kind == "span" else None,
                "mean_span": float(d.mean_span) if d.kind == "span" else None,
            }
            if d.kind == "prefix":
                configured["expected_target_share"] = 0.5  # uniform split point in [1, L-1]
            measured = _lengths(a, seen)
            measured.update({
                "noise_density": _ratio(a["noise"], a["raw"]),  # S: target share of the raw segment
                "noise_density_per_example": _ratio(a["density_sum"], a["count"]),
                "mean_span": _ratio(a["noise"], a["spans"]) if d.kind == "span" else None,
                "noise_tokens": a["noise"], "raw_tokens": a["raw"], "spans": a["spans"],
                "mean_raw_length": _ratio(a["raw"], a["count"]),  # vs configured raw_length
                "mean_spans": _ratio(a["spans"], a["count"]),
                "full_length_share": _ratio(a["full"], a["count"]),
            })
            if d.kind == "span":
                measured["expected_noise_density"] = _ratio(a["expected_noise"], a["raw"])
                measured["expected_mean_span"] = _ratio(a["expected_noise"], a["expected_spans"])
            per[str(i)] = {"name": name, "params": _params(d), "configured": configured, "measured": measured}
    out = {
        "objective": data.objective,
        "seq_len": data.seq_len,
        "concat_documents": data.concat_documents,
        "examples": seen,
        "batches": batches,
        "padding_fraction": pad / total if total else 0.0,
        "denoisers": per,
    }
    if enc_total:  # encoder-decoder: padding_fraction is the decoder row's; the encoder row has its own
        inputs_len, targets_len = encoder_decoder_lengths(data)
        out.update(inputs_len=inputs_len, targets_len=targets_len, encoder_padding_fraction=enc_pad / enc_total)
    return out


def _lengths(a: dict[str, Any], seen: int) -> dict[str, Any]:
    return {
        "count": a["count"],
        "share": _ratio(a["count"], seen),
        "mean_input_length": _ratio(a["inputs"], a["count"]),
        "mean_target_length": _ratio(a["targets"], a["count"]),
        "mean_example_length": _ratio(a["tokens"], a["count"]),
    }


def _f(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def format_stats(stats: dict[str, Any]) -> str:
    """A readable table: one row per denoiser (config order), configured vs measured, then padding."""
    shape = (f"encoder-decoder, inputs_len {stats['inputs_len']}, targets_len {stats['targets_len']}"
             if "inputs_len" in stats else f"seq_len {stats['seq_len']}")
    cut = ("documents concatenated, cut at each denoiser's raw length" if stats.get("concat_documents")
           else "examples per document")
    lines = [f"objective {stats['objective']}, {shape}: {stats['examples']} examples from {stats['batches']} batches"
             + ("" if stats["objective"] == "causal_lm" else f" ({cut})")]
    if stats["objective"] == "causal_lm":
        m = stats["denoisers"]["0"]["measured"]
        lines.append("causal_lm has no denoisers (next-token prediction over whole documents); "
                     "an example is one packed segment")
        lines.append(f"mean segment length {_f(m['mean_example_length'], '.1f')} tokens, "
                     f"mean loss tokens {_f(m['mean_target_length'], '.1f')}")
    else:
        head = ["denoiser", "count", "share cfg/meas", "raw length cfg/meas", "noise density cfg/meas",
                "mean span cfg/meas", "mean input", "mean target"]
        rows = []
        for key in sorted(stats["denoisers"], key=int):
            e = stats["denoisers"][key]
            c, m = e["configured"], e["measured"]
            if c["kind"] == "prefix":
                density = f"{_f(c['expected_target_share'], '.2f')}* / {_f(m['noise_density'])}"
                span = "- / -"
            else:
                density = f"{_f(c['noise_density'], '.2f')} / {_f(m['noise_density'])}"
                span = f"{_f(c['mean_span'], 'g')} / {_f(m['mean_span'], '.2f')}"
            rows.append([f"{key} {e['name']} ({e['params']})", str(m["count"]),
                         f"{_f(c['share'])} / {_f(m['share'])}",
                         f"{c['raw_length']} / {_f(m['mean_raw_length'], '.1f')}", density, span,
                         _f(m["mean_input_length"], ".1f"), _f(m["mean_target_length"], ".1f")])
        widths = [max(len(r[j]) for r in [head, *rows]) for j in range(len(head))]
        fmt = lambda r: "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths)))
        lines += [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]
        lines.append("noise density: noise tokens / raw segment tokens; * S: target share of the raw segment, "
                     "expected 0.5 (uniform split)")
        lines.append("mean span: noise tokens / sentinels in the inputs; mean input includes the mode token (if any); "
                     "mean target includes sentinels and eos")
    if "encoder_padding_fraction" in stats:
        lines.append(f"padding fraction: decoder rows {stats['padding_fraction']:.4f}, encoder rows "
                     f"{stats['encoder_padding_fraction']:.4f} (segment ids 0 over all batches read)")
    else:
        lines.append(f"padding fraction {stats['padding_fraction']:.4f} (segment_ids == 0 over all batches read)")
    return "\n".join(lines)
