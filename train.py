"""train.py: the single entry point. Any zoo model on any dataset, on any hardware.

    python train.py fit                                        # MLP on two-moons, needs no files
    python train.py fit --data mnist --model lenet5            # --data NAME = --config configs/NAME.yaml
    python train.py fit --config checkpoints/mnist/lenet5/<run>/config.yaml --ckpt_path last   # resume
    python train.py test --config <run>/config.yaml --ckpt_path <run>/best.ckpt
    python train.py compare --models [linear,mlp] --datasets [moons]
    python train.py doctor

fit, validate and test are LightningCLI (zoo/cli.py: every option comes from the type-hinted
__init__ of ZooModule, the datamodules and Lightning's Trainer); a Run (zoo/run.py) adds the run
directory (checkpoints/<data>/<model>/<run-id>/), resume, early stopping, the loggers and a final
summary with the test accuracy of the best checkpoint. The other subcommands are zoo/commands/.
Follow a fit: zoo/cli.py (options) -> zoo/run.py (the run) -> zoo/module.py (the steps).
"""

import importlib
import sys

from zoo.errors import run_main

# Subcommands that are not Trainer methods: each lives in its own module with a main(args) -> int.
EXTRA_COMMANDS = {
    "compare": "zoo.commands.compare",
    "doctor": "zoo.commands.doctor",
    "predict": "zoo.commands.predict",
    "export": "zoo.commands.export",
}


HELP = """usage: train.py SUBCOMMAND [options]      (python train.py SUBCOMMAND --help for its options)

Train, evaluate and compare lightning-zoo models. Subcommands:
  fit       train a model on a dataset (default: the lecture's MLP on two-moons), test its best checkpoint
  validate  evaluate a checkpoint on the validation split (--config <run>/config.yaml --ckpt_path ...)
  test      evaluate a checkpoint on the test split
  compare   train several models and seeds, write the accuracy-versus-cost tables (results/)
  doctor    check the environment: packages, devices, data files, W&B
  predict   classify image files with a checkpoint or the shipped weights
  export    write a checkpoint as TorchScript, ONNX or torch.export (.pt2), checked against it

  python train.py fit --data mnist --model lenet5
  python evaluate.py <run>/best.ckpt       (test metrics, per-class accuracy, confusion matrix)
Add --debug to any command to see the full traceback of an error."""


def main(args: list[str] | None = None) -> int:
    """Entry point: returns the exit status. User mistakes print one paragraph, not a traceback."""
    args = list(sys.argv[1:] if args is None else args)
    if not [a for a in args if a != "--debug"] or args[0] in ("-h", "--help"):
        print(HELP, file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    if args[0] in EXTRA_COMMANDS:
        return run_main(importlib.import_module(EXTRA_COMMANDS[args[0]]).main, args[1:])
    # Lightning is imported here, for fit/validate/test only: --help, predict and export start in
    # about the time of `import torch` (it takes seconds to import).
    from zoo import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
