"""Interop with Hugging Face transformers: `pretrax export` and `pretrax import` (docs/interop.md).

  params.py       a run's parameters as flat per-layer names <-> the nnx state (scan_layers or not)
  fold.py         muP and depth multipliers folded into the weights (or out of them): sp model, same function
  hf_families.py  per family (OpenAIGPT, Llama, T5): config <-> ModelSection, weight names and layouts
  hf_export.py    run dir -> config.json + model.safetensors (+ the SentencePiece model)
  hf_import.py    HF dir -> run dir with a step-0 checkpoint that `pretrax train` resumes

Nothing here imports torch or transformers: safetensors and JSON are all a model directory holds,
so training never pays for them (tests/test_hf_interop.py checks it).
"""
