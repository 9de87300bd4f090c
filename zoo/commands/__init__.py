"""The commands above the training core, one module each with `main(args) -> int`: compare (tables),
doctor (environment check), predict, export (train.py dispatches to these by name), evaluate
(evaluate.py) and pretrained (writes the shipped weights). They may import the floors below them,
never train.py or evaluate.py (tests/test_layout.py)."""
