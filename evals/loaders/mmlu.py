"""Local loader of MMLU (hendrycks CSVs without header: question, A, B, C, D, answer letter)."""

from functools import partial
from pathlib import Path

from evals.loaders import register
from evals.loaders._io import read_csv

SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine college_physics "
    "computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics "
    "formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_european_history high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_mathematics high_school_microeconomics high_school_physics "
    "high_school_psychology high_school_statistics high_school_us_history high_school_world_history "
    "human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning "
    "management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition "
    "philosophy prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy virology "
    "world_religions"
).split()

_SPLITS = {"test": "test", "dev": "dev", "validation": "val"}


def _rows(path: Path, subject: str) -> list[dict]:
    """One MMLU CSV -> cais/mmlu rows (question, subject, choices, answer index)."""
    out = []
    for lineno, row in enumerate(read_csv(path), 1):
        if len(row) != 6 or row[5].strip() not in "ABCD" or not row[5].strip():
            raise ValueError(f"{path}:{lineno}: expected question,A,B,C,D,answer-letter")
        out.append({"question": row[0], "subject": subject, "choices": row[1:5], "answer": "ABCD".index(row[5].strip())})
    return out


def load_subject(data_dir: Path, subject: str) -> dict:
    """test, dev (the 5 few-shot examples) and validation splits of one subject."""
    return {split: _rows(data_dir / "mmlu" / folder / f"{subject}_{folder}.csv", subject) for split, folder in _SPLITS.items()}


for _subject in SUBJECTS:
    register(f"mmlu_{_subject}", files=[f"mmlu/{folder}/{_subject}_{folder}.csv" for folder in _SPLITS.values()])(partial(load_subject, subject=_subject))
