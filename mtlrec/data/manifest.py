"""The dataset manifest written by `mtlrec-prepare`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from mtlrec import io as mio
from mtlrec.config import Schema
from mtlrec.data import records

MANIFEST = "manifest.json"


class DatasetChanged(ValueError):
    """The dataset a run reads was replaced under it."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A prepared dataset: where its files are and what they hold."""

    root: str
    schema: Schema
    vocab_size: dict[str, int]
    splits: dict[str, dict[str, Any]]
    numeric_stats: dict[str, dict[str, float]]
    vocab_files: dict[str, str]
    raw: dict[str, Any]

    def files(self, split: str) -> list[str]:
        if split not in self.splits:
            raise ValueError(f"No split {split!r} in {self.root}. Splits: {sorted(self.splits)}")
        return [mio.join(self.root, f) for f in self.splits[split]["files"]]

    def rows(self, split: str) -> int:
        return int(self.splits[split]["rows"])

    def fingerprint(self) -> str:
        """What identifies this dataset's content: when it was prepared and
        every shard's name, rows and checksum."""
        content = {"created": self.raw.get("created"),
                   "splits": {s: [info.get("files"), info.get("rows"), info.get("file_crc32c")]
                              for s, info in sorted(self.splits.items())}}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def check_unchanged(self, doing: str) -> None:
        """Raises DatasetChanged when the dataset at `root` is no longer this
        one (`mtlrec-prepare --overwrite` replaced it, or it was removed):
        a run reading on would mix two datasets under one identity."""
        try:
            now = load_manifest(self.root)
        except (OSError, ValueError):
            now = None
        if now is not None and now.fingerprint() == self.fingerprint():
            return
        became = f"prepared {now.raw.get('created')} now" if now is not None else "no dataset there now"
        raise DatasetChanged(
            f"--data={self.root} was replaced while this run read it (prepared {self.raw.get('created')} when it "
            f"started, {became}), {doing}: stopped, so that no epoch or score mixes two datasets. The checkpoints "
            "of the epochs before are kept; to train on the new dataset rerun with --overwrite or another "
            "--model_dir"
        )

    def check_files(self, splits=("train", "valid", "test"), checksums: bool = False) -> None:
        """Every shard of `splits` is there with the size (and, with
        `checksums`, the CRC32C) that prepare recorded; raises ValueError
        naming the first file that is missing, truncated or corrupted.
        Sizes cost one stat per file; checksums read every byte."""
        for split in splits:
            info = self.splits.get(split, {})
            sizes = info.get("file_bytes") or [None] * len(info.get("files", []))
            crcs = info.get("file_crc32c") or [None] * len(sizes)
            for name, size, crc in zip(info.get("files", []), sizes, crcs):
                path = mio.join(self.root, name)
                if not mio.exists(path):
                    raise ValueError(f"{path}: shard missing from the dataset (listed in {MANIFEST}); "
                                     "re-run mtlrec-prepare")
                actual = mio.size(path)
                if size is not None and actual != size:
                    raise ValueError(f"{path}: shard is {actual} bytes, {MANIFEST} records {size} "
                                     f"({'truncated' if actual < size else 'grown'}); re-run mtlrec-prepare")
                if checksums and crc is not None:
                    import google_crc32c

                    with mio.open_binary(path) as f:
                        if google_crc32c.value(f.read()) != crc:
                            raise ValueError(f"{path}: shard is corrupted (CRC32C differs from {MANIFEST}); "
                                             "re-run mtlrec-prepare")

    def vocabulary(self, feature: str) -> list[str]:
        """The string vocabulary of a categorical feature (index i + 1)."""
        with mio.open_text(mio.join(self.root, self.vocab_files[feature])) as f:
            return f.read().split("\n")[:-1]


def load_manifest(path: str) -> Manifest:
    """From a dataset directory (or the manifest file itself)."""
    root = path.rstrip("/")
    if root.endswith(".json"):
        root = root.rsplit("/", 1)[0] if "/" in root else "."
    file = mio.join(root, MANIFEST)
    if not mio.exists(file):
        raise FileNotFoundError(
            f"{file} not found: {path} is not a prepared dataset (run mtlrec-prepare; "
            "an interrupted prepare leaves no manifest)"
        )
    raw = mio.read_json(file)
    if raw.get("format_version") != records.FORMAT_VERSION:
        raise ValueError(
            f"{file}: format_version {raw.get('format_version')!r}, expected "
            f"{records.FORMAT_VERSION}; re-run mtlrec-prepare"
        )
    return Manifest(
        root=root,
        schema=Schema.from_json(raw["schema"]),
        vocab_size=raw["vocab_size"],
        splits=raw["splits"],
        numeric_stats=raw.get("numeric_stats", {}),
        vocab_files=raw.get("vocab_files", {}),
        raw=raw,
    )
