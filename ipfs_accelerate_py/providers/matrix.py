"""The README's capability matrix, generated from the providers' own flags.

A test regenerates it and compares with README.md, so the table cannot drift
from what the code supports.  Regenerate with
``python -m ipfs_accelerate_py.providers.matrix``.
"""
from __future__ import annotations

from .base import all_provider_classes

#: (column title, operations that count for it)
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("chat", ("chat",)),
    ("stream", ("stream_chat",)),
    ("completion", ("complete", "stream_complete")),
    ("embed", ("embed",)),
    ("models", ("models",)),
    ("tokens", ("count_tokens",)),
    ("images", ("images",)),
    ("audio", ("transcribe", "translate", "speech")),
    ("moderation", ("moderate",)),
    ("rerank", ("rerank",)),
    ("infer", ("infer",)),
    ("RAG", ("chatqna", "stream_chatqna")),
    ("storage", ("s3_put", "s3_get", "s3_upload", "s3_presign")),
)
START = "<!-- capability-matrix:start -->"
END = "<!-- capability-matrix:end -->"


def capability_matrix() -> str:
    header = "| provider | " + " | ".join(title for title, _ in COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    rows = []
    for cls in all_provider_classes():
        cells = []
        for _, ops in COLUMNS:
            have = [op for op in ops if op in cls.operations]
            cells.append("✓" if len(have) == len(ops) else ("part" if have else ""))
        rows.append(f"| `{cls.name}` | " + " | ".join(cells) + " |")
    return "\n".join([START, header, rule, *rows, END])


def update_readme(path: str = "README.md") -> bool:
    """Rewrite the table between the markers; True when the file changed."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    new = head + capability_matrix() + tail
    if new != text:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != text


if __name__ == "__main__":
    print(capability_matrix())
