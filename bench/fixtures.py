"""The files the benchmark serves, generated at run time and the same every run: the three static
cases' files, and a large tree of small files for the start-up case."""

from __future__ import annotations

import random
from pathlib import Path

from offload.static.compress import encode

TREE_EXTENSIONS = ("css", "js", "html", "svg", "json", "txt", "png")
TREE_FILES_PER_DIRECTORY = 100
TREE_SMALLEST_BYTES, TREE_LARGEST_BYTES = 200, 20 * 1024


def write_fixtures(root: Path) -> None:
    """1 KB CSS; 50 KB JS with .br/.gz next to it; 5 MB of random bytes."""
    words = random.Random(7)
    css = "".join(
        f".c{n} {{ margin: {n % 17}px; color: #{n * 999 % 4096:03x}; }}\n" for n in range(40)
    )
    (root / "small.css").write_bytes(css.encode()[:1024])
    names = [f"{words.choice(['get', 'set', 'load', 'render'])}{n}" for n in range(2000)]
    script = "".join(f"function {name}(a, b) {{ return a + b * {len(name)}; }}\n" for name in names)
    data = script.encode()[: 50 * 1024]
    (root / "app.js").write_bytes(data)
    (root / "app.js.br").write_bytes(encode(data, "br", best=True))
    (root / "app.js.gz").write_bytes(encode(data, "gzip", best=True))
    (root / "big.bin").write_bytes(random.Random(11).randbytes(5 * 1024 * 1024))


def write_tree(root: Path, files: int) -> str:
    """`files` files, a hundred to a directory (10,000 make 100 directories two levels deep),
    extensions mixed, sizes spread evenly on a log scale from 200 B to 20 KB: text that
    compresses like source, PNGs that do not. Returns the URL path of the last one."""
    chooser = random.Random(17)
    vocabulary = [f"{chooser.choice(['item', 'value', 'render', 'node'])}{n}" for n in range(500)]
    text = " ".join(chooser.choice(vocabulary) for _ in range(8000)).encode()
    directories = max(1, files // TREE_FILES_PER_DIRECTORY)
    path = ""
    for n in range(files):
        directory = n % directories
        extension = TREE_EXTENSIONS[n % len(TREE_EXTENSIONS)]
        ratio = TREE_LARGEST_BYTES / TREE_SMALLEST_BYTES
        size = int(TREE_SMALLEST_BYTES * ratio ** chooser.random())
        if extension == "png":
            body = b"\x89PNG\r\n\x1a\n" + chooser.randbytes(size - 8)
        else:
            start = chooser.randrange(len(text) - size)
            body = text[start : start + size]
        path = f"s{directory // 10}/p{directory % 10}/file{n}.{extension}"
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    return f"/{path}"
