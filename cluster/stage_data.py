"""Copy a data set from a bucket to node-local disk once per node: `python -m cluster.stage_data SRC DEST`.

The ImageNet preset reads ImageFolder train/ and val/ under /data/imagenet on every node; the cluster
definitions stage it there from s3:// or gs:// when a node starts. A marker file records a finished copy,
so a restarted node (or a second call) does not copy again, and an interrupted copy is redone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

MARKER = ".staged"


def stage(source: str, dest: Path) -> bool:
    """Copy the tree under `source` (URI or local path) into `dest` unless done before; True if it copied."""
    from pyarrow import fs

    marker = dest / MARKER
    if marker.is_file():
        return False
    dest.mkdir(parents=True, exist_ok=True)
    fs.copy_files(source, str(dest), use_threads=True)
    marker.write_text(f"{source}\n")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: stage SOURCE into DEST; prints what it did."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m cluster.stage_data SOURCE_URI DEST_DIR", file=sys.stderr)
        return 2
    source, dest = args[0], Path(args[1])
    copied = stage(source, dest)
    print(f"{dest}: {'staged from ' + source if copied else 'already staged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
