"""evaluate.py: a checkpoint in; test metrics, per-class accuracy and the confusion matrix out.

    python evaluate.py checkpoints/fashion_mnist/mlp/<run>/best.ckpt
    python evaluate.py checkpoints/fashion_mnist/mlp/<run>          # a run directory: its best.ckpt
    python evaluate.py run1/best.ckpt run2/best.ckpt --json out.json  # several: one table

The command itself is zoo/commands/evaluate.py (Lightning's Trainer.test with fit's metrics).
The model and the datamodule are rebuilt from the checkpoint alone (it stores the model's
hyperparameters, the dataset name and its normalisation), so no config is needed; the data
directory can be overridden. Checkpoints are loaded with weights_only=True: a file that would run
code when unpickled is refused. A checkpoint never makes evaluate download data or create folders:
the data directory it names is only read (--data_dir wins over it), its download option is ignored.
"""

import sys

from zoo.commands.evaluate import evaluate, main, report  # noqa: F401 (the script's API: evaluate.evaluate(...))

if __name__ == "__main__":
    sys.exit(main())
