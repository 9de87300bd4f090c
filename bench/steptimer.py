"""Images/s of train.py's training steps, timed from after WARMUP optimizer steps to the last: a callback
either version of the code loads with --trainer.callbacks+=steptimer.StepTimer (it imports nothing of the
project, so old commits load it too). A Lightning step counts as one optimizer step: true on the plain path,
which --trainer.max_steps selects (it is not honoured inside --steps_per_execution's chunks)."""
import json
import os
import sys
import time

import lightning.pytorch as L

WARMUP = 3


class StepTimer(L.Callback):
    def __init__(self):
        self.start, self.images, self.steps = None, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == WARMUP and self.start is None:
            self.start = time.perf_counter()
        elif self.start is not None:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.images += len(x)
            self.steps += 1

    def on_train_end(self, trainer, pl_module):
        if not self.steps:  # nothing past the warm-up: say so instead of a TypeError in Lightning's hook
            print(f"steptimer: no step after the {WARMUP} warm-up steps was timed; pass --trainer.max_steps "
                  f"{WARMUP + 2} or more.", file=sys.stderr, flush=True)
            return
        seconds = time.perf_counter() - self.start
        print(json.dumps({"tag": os.environ.get("TAG"), "steps": self.steps, "images": self.images,
                          "img_per_s": round(self.images / seconds, 1)}), flush=True)
