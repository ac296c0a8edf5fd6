"""The `keras-finetune` console script: TensorFlow's start-up lines silenced, then `keras_finetune.cli.main`.

`import keras_finetune` registers the package's Keras classes, so it imports
Keras and TensorFlow, and TensorFlow's C++ libraries write their start-up
lines (absl's preamble, oneDNN, CUDA stubs, CPU features) straight to the
process's stderr as they load, before any logging setting can reach them.
This module sits outside the package so that it runs before that import:
it sets `TF_CPP_MIN_LOG_LEVEL` (unless the user did) and holds file
descriptor 2 while the package loads, then passes on every line that is not
start-up noise.
"""

import os
import re
import sys
import tempfile

_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl's log-line prefix (seconds since the epoch)
    r"|To enable the following instructions: .* rebuild TensorFlow"
)


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            from keras_finetune import cli
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        for line in captured.read().decode(errors="replace").splitlines(keepends=True):
            if not _NOISE.match(line):
                sys.stderr.write(line)
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
