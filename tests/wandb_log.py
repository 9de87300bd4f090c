"""Read a W&B offline run (`run-<id>.wandb`) with wandb's own protobuf records, so tests check what
W&B would upload rather than grepping text. The file is a LevelDB-style log: a 7-byte W&B header,
then 32 KiB blocks of chunks (crc32 4 bytes, length 2, type 1: full/first/middle/last)."""
import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7


def records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def key(item) -> str:
    """W&B splits 'val/acc' into nested_key ['val', 'acc']."""
    return item.key or "/".join(item.nested_key)


def summary(path: Path) -> tuple[dict, dict, list[dict]]:
    """(config, final summary, history rows) of an offline run, as W&B stores them."""
    config, final, history = {}, {}, []
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind in ("config", "run"):
            items = r.config.update if kind == "config" else r.run.config.update
            config.update({i.key: json.loads(i.value_json) for i in items})
        elif kind == "summary":
            final.update({key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "history":
            history.append({key(i): json.loads(i.value_json) for i in r.history.item})
    return config, final, history
