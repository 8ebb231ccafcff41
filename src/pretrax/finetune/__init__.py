"""GPT-1 supervised fine-tuning (`pretrax finetune RUN_DIR TASK.yaml`): task.py (the task file and its
examples), transforms.py (the input transformations), step.py (head, loss, jitted steps), loop.py (the run)."""
