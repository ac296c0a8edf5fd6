"""The `keras-finetune` console script: TensorFlow's start-up lines silenced, then `keras_finetune.cli.main`.

Every command reads images with `tf.data`, so the launcher imports
TensorFlow (and `keras_finetune`, which imports Keras to register the
package's Keras classes), and TensorFlow's C++ libraries write their start-up
lines (absl's preamble, oneDNN, CUDA stubs, CPU features) straight to the
process's stderr as they load, before any logging setting can reach them.
This module sits outside the package so that it runs before that import:
it sets `TF_CPP_MIN_LOG_LEVEL` (unless the user did) and holds file
descriptor 2 while the package loads, then passes on every line that is not
start-up noise. Worker processes of a command start through `start_worker`,
which does the same.
"""

import contextlib
import importlib
import os
import re
import sys
import tempfile

_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl's log-line prefix (seconds since the epoch)
    r"|To enable the following instructions: .* rebuild TensorFlow"
)


@contextlib.contextmanager
def quiet_start():
    """Holds file descriptor 2 while TensorFlow loads, then passes on every line that is not start-up noise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _NOISE.match(line):
                    sys.stderr.write(line)


def main() -> int:
    try:
        with quiet_start():
            from keras_finetune import cli

            importlib.import_module("tensorflow")  # every command reads images with tf.data; its start-up lines go here too
    except ModuleNotFoundError as error:
        if error.name != "tensorflow":
            raise
        sys.stderr.write(
            "keras-finetune: the command reads image folders with tf.data and needs TensorFlow, which is not "
            "installed (it is optional on the JAX and PyTorch backends). Install it: pip install "
            "\"keras-finetune[tensorflow]\" (or tensorflow-cpu), and keep KERAS_BACKEND as you like.\n"
        )
        return 1
    return cli.main()


def start_worker(setup: str) -> None:
    """Starts a worker process (a `multiprocessing` initializer, as `keras-finetune demo` uses):
    imports the module of `setup` ("module:function") as `main` imports the package, then calls the
    function."""
    module, function = setup.split(":")
    with quiet_start():
        loaded = importlib.import_module(module)
    getattr(loaded, function)()


if __name__ == "__main__":
    sys.exit(main())
