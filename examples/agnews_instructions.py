"""Write AG News as instruction-tuning JSONL: OUT/train.jsonl and OUT/test.jsonl.

Each row becomes ``{"instruction": QUESTION, "input": <news text>, "output": <label>, "label":
<label>}`` (``label`` lets Dirichlet partitions skew by topic). Write them outside the repository
and outside the shared data folder, then run on them::

    .venv/bin/python examples/agnews_instructions.py /tmp/agnews-instruct 2000
    .venv/bin/fedfm run configs/agnews_instruct.toml --set task.instruction='' \\
        --set data.train=/tmp/agnews-instruct/train.jsonl \\
        --set data.test=/tmp/agnews-instruct/test.jsonl

(``configs/agnews_instruct.toml`` as it stands reads the TSV files directly, with the same
question in ``task.instruction``; the JSONL route is for data you want to inspect or edit.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedfm.config import resolve_path
from fedfm.data.instructions import instruction_records, write_jsonl
from fedfm.data.table import load_labelled_text

QUESTION = (
    "Which topic is this news about? Answer with one word: World, Sports, Business or Sci/Tech."
)


def main(out: Path, rows: int = 0) -> None:
    source = resolve_path("${FEDFM_DATA}/agnews")
    if out.resolve().is_relative_to(source.resolve().parent):
        sys.exit(f"{out} is inside the shared data folder; write the JSONL somewhere else")
    for split in ("train", "test"):
        table = load_labelled_text(source / f"{split}.tsv", "text", "label", None, rows)
        answers = [table.label_names[i] for i in table.labels]
        path = write_jsonl(
            instruction_records(table.texts, answers, QUESTION), out / f"{split}.jsonl"
        )
        print(f"{path}: {len(table)} instructions")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR [ROWS]  (ROWS: the first N rows of each split)")
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 0)
