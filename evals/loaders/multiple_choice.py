"""Local loaders of the nine multiple-choice benchmarks, converting release files to hub schemas."""

import re
from pathlib import Path

from evals.errors import DataError
from evals.loaders import register
from evals.loaders._io import read_csv, read_jsonl, read_lines, zip_labels


def _arc_rows(path: Path) -> list[dict]:
    """ARC release JSONL -> allenai/ai2_arc rows (id, question, choices{text,label}, answerKey)."""
    out = []
    for row in read_jsonl(path):
        choices = row["question"]["choices"]
        out.append({
            "id": row["id"],
            "question": row["question"]["stem"],
            "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]},
            "answerKey": row["answerKey"],
        })
    return out


@register("arc_easy", files=["arc/ARC-Easy-Test.jsonl", "arc/ARC-Easy-Dev.jsonl"])
def arc_easy(data_dir: Path) -> dict:
    """ARC-Easy test (2376) and validation (570)."""
    return {"test": _arc_rows(data_dir / "arc/ARC-Easy-Test.jsonl"),
            "validation": _arc_rows(data_dir / "arc/ARC-Easy-Dev.jsonl")}


@register("arc_challenge", files=["arc/ARC-Challenge-Test.jsonl", "arc/ARC-Challenge-Dev.jsonl"])
def arc_challenge(data_dir: Path) -> dict:
    """ARC-Challenge test (1172) and validation (299)."""
    return {"test": _arc_rows(data_dir / "arc/ARC-Challenge-Test.jsonl"),
            "validation": _arc_rows(data_dir / "arc/ARC-Challenge-Dev.jsonl")}


@register("piqa", files=["piqa/valid.jsonl", "piqa/valid-labels.lst"])
def piqa(data_dir: Path) -> dict:
    """PIQA validation (1838): goal, sol1, sol2, label (int)."""
    rows = read_jsonl(data_dir / "piqa/valid.jsonl")
    labels = read_lines(data_dir / "piqa/valid-labels.lst")
    zip_labels(data_dir / "piqa/valid-labels.lst", rows, labels)
    return {"validation": [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(lab)}
                           for r, lab in zip(rows, labels)]}


@register("siqa", files=["siqa/dev.jsonl", "siqa/dev-labels.lst"])
def siqa(data_dir: Path) -> dict:
    """Social IQa dev (1954): context, question, answerA-C, label ('1'-'3')."""
    rows = read_jsonl(data_dir / "siqa/dev.jsonl")
    labels = read_lines(data_dir / "siqa/dev-labels.lst")
    zip_labels(data_dir / "siqa/dev-labels.lst", rows, labels)
    keys = ("context", "question", "answerA", "answerB", "answerC")
    return {"validation": [{**{k: r[k] for k in keys}, "label": str(lab)} for r, lab in zip(rows, labels)]}


@register("winogrande", files=["winogrande/dev.jsonl", "winogrande/dev-labels.lst"])
def winogrande(data_dir: Path) -> dict:
    """WinoGrande (xl) dev (1267): sentence, option1, option2, answer ('1'/'2')."""
    rows = read_jsonl(data_dir / "winogrande/dev.jsonl")
    labels = read_lines(data_dir / "winogrande/dev-labels.lst")
    zip_labels(data_dir / "winogrande/dev-labels.lst", rows, labels)
    out = []
    for i, (row, lab) in enumerate(zip(rows, labels)):
        if "answer" in row and str(row["answer"]) != lab:
            raise DataError(f"winogrande/dev.jsonl line {i + 1}: answer {row['answer']} disagrees with dev-labels.lst ({lab})")
        out.append({"sentence": row["sentence"], "option1": row["option1"], "option2": row["option2"], "answer": lab})
    return {"validation": out}


@register("hellaswag", files=["hellaswag/hellaswag_val.jsonl"])
def hellaswag(data_dir: Path) -> dict:
    """HellaSwag validation (10042) in the Rowan/hellaswag schema (label as a string)."""
    keys = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type")
    rows = read_jsonl(data_dir / "hellaswag/hellaswag_val.jsonl")
    return {"validation": [{**{k: r[k] for k in keys}, "label": str(r["label"])} for r in rows]}


_OBQA_CHOICE = re.compile(r"\(([A-D])\)\s*")


def parse_obqa_choices(text: str) -> dict:
    """'(A) x (B) y (C) z (D) w' -> {'text': [x, y, z, w], 'label': ['A', 'B', 'C', 'D']}."""
    parts = _OBQA_CHOICE.split(text.strip())
    labels, texts = parts[1::2], [t.strip() for t in parts[2::2]]
    if labels != ["A", "B", "C", "D"] or parts[0].strip():
        raise ValueError(f"cannot parse OpenBookQA choices {text[:80]!r}")
    return {"text": texts, "label": labels}


@register("openbookqa", files=["openbookqa/test.tsv"])
def openbookqa(data_dir: Path) -> dict:
    """OpenBookQA main test (500) from the release TSV, in the allenai/openbookqa schema."""
    path = data_dir / "openbookqa/test.tsv"
    out = []
    for lineno, row in enumerate(read_csv(path, delimiter="\t", header=True), 2):
        try:
            choices = parse_obqa_choices(row["Choices"])
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: {exc}") from exc
        out.append({"id": row["ID"], "question_stem": row["Question Stem"], "choices": choices,
                    "answerKey": row["Answer Key"].strip()})
    return {"test": out}


@register("boolq", files=["boolq/val.jsonl"])
def boolq(data_dir: Path) -> dict:
    """BoolQ validation (3270) in the SuperGLUE schema: question, passage, idx, label (0/1)."""
    out = []
    for row in read_jsonl(data_dir / "boolq/val.jsonl"):
        label = row["label"]
        if isinstance(label, str):
            if label.lower() not in ("true", "false"):
                raise ValueError(f"boolq label {label!r} is not true/false")
            label = label.lower() == "true"
        out.append({"question": row["question"], "passage": row["passage"], "idx": int(row["idx"]), "label": int(label)})
    return {"validation": out}
