"""Builds evals/finetune/code_or_comment/{train,validation}.jsonl from this interpreter's standard library.

Each example is one line of the stdlib's own Python source, leading whitespace removed: either a
statement (`code`) or the text of a full-line comment with its `#` taken off (`comment`), so the task
is "is this line English prose or Python?", with the comment marker gone. Lines are chosen from
different files for the two splits (every third file is held out), 100 of each class in train and
50 in validation; the same interpreter gives the same files.

    .venv/bin/python evals/finetune/build_code_or_comment.py   # rewrites the two files
"""

import json
import os
import random
import re
import sysconfig

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "code_or_comment")
PER_CLASS = {"train": 100, "validation": 50}


def lines_of(path):
    in_string = False  # inside a triple-quoted string (docstrings are prose, not code)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip()
            quotes = text.count('"""') + text.count("'''")
            was_in_string, in_string = in_string, in_string ^ (quotes % 2 == 1)
            if was_in_string or quotes:
                continue
            if text.startswith("#"):
                prose = text.lstrip("#").strip()
                # prose, not commented-out code or a banner
                if (30 <= len(prose) <= 80 and len(re.findall(r"[A-Za-z]{2,}", prose)) >= 5
                        and not re.search(r"[(){}\[\]=<>_`]|->|\.\w", prose) and not prose.startswith("!")):
                    yield prose, "comment"
            elif 30 <= len(text) <= 80 and "#" not in text and not text.startswith(('"', "'")) and re.search(r"[(=:.]", text):
                yield text, "code"


def main():
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(name for name in os.listdir(stdlib) if name.endswith(".py"))
    pools = {(s, c): [] for s in PER_CLASS for c in ("code", "comment")}
    for i, name in enumerate(files):
        split = "validation" if i % 3 == 0 else "train"
        for text, kind in lines_of(os.path.join(stdlib, name)):
            pools[split, kind].append(text)
    rng = random.Random(0)
    os.makedirs(HERE, exist_ok=True)
    for split, n in PER_CLASS.items():
        rows = []
        for kind in ("code", "comment"):
            pool = sorted(set(pools[split, kind]))
            rows += [{"text": t, "label": kind} for t in rng.sample(pool, n)]
        rng.shuffle(rows)
        with open(os.path.join(HERE, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        print(f"{split}: {len(rows)} examples")


if __name__ == "__main__":
    main()
