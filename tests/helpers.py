"""What several test modules share besides fixtures: the repository root, free ports, synthetic
IDX datasets, and where real data may be."""

from __future__ import annotations

import ast
import io
import json
import shutil
import socket
from pathlib import Path
from typing import Any

from training.data import SPLIT_FILES, data_root, synthetic_digits
from training.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "datasets"  # one folder per dataset, beside the checkout


def write_dataset(directory: Path, n_train: int = 640, n_test: int = 200) -> Path:
    """The four IDX files of a dataset in `directory`, with synthetic digits (training.data.synthetic_digits)."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        image_file, label_file = SPLIT_FILES[split]
        write_idx(directory / image_file, images)
        write_idx(directory / label_file, labels)
    return directory


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_data_roots() -> list[Path]:
    """Where real datasets may be, as data roots: where the CLIs look ($CAPSNET_DATA_DIR, else the
    download cache), then the shared folder beside the checkout."""
    return list(dict.fromkeys([data_root(), SHARED_DATA]))


def has_dataset(root: Path, dataset: str) -> bool:
    return all((root / dataset / f).is_file() for pair in SPLIT_FILES.values() for f in pair)


def imports_in(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth of its code (lazy imports too); for
    `from package import name`, `package.name` as well, since the name may be a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def with_accuracy(export_dir: Path, out: Path, val_accuracy: float) -> Path:
    """A copy of an export whose recorded validation accuracy is `val_accuracy` (what the `best`
    policy ranks by)."""
    shutil.copytree(export_dir, out)
    config = json.loads((out / "config.json").read_text())
    config["train_metrics"]["best_val_accuracy"] = val_accuracy
    (out / "config.json").write_text(json.dumps(config))
    return out


def encoded(image: Any, fmt: str = "PNG") -> bytes:
    """An image file's bytes: `image` a PIL image or a uint8 array ([H, W] gray, [H, W, 3|4] colour)."""
    from PIL import Image

    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt)
    return buf.getvalue()
