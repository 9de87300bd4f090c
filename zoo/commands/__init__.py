"""The subcommands that are not Trainer methods, one module each with `main(args) -> int`:
compare (tables), doctor (environment check), predict, export, and pretrained (shipped weights).
train.py dispatches to them by name."""
