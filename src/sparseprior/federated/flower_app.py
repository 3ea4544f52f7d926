"""FedDST on Flower (``flwr>=1.42,<2``, Message API): a ServerApp and a ClientApp that run the
same client/server functions as the embedded engine (needs the ``fed`` extra).

The ServerApp runs :meth:`Federation.run_round` with a ``collect`` function that sends one
``train`` message per sampled client and waits for the replies; the ClientApp answers with
:meth:`Federation.local_reply`. A message carries the wire format of :mod:`.comm` as an
``ArrayRecord`` (values per tensor; every mask as a ``uint8`` array: the packed bitmap, or the
bytes of the index array when indices are smaller) plus a ``ConfigRecord`` with the layout, the
client's plan and the experiment config (JSON), so SuperNodes need no config file. Bytes are
counted from the same serialised message as in the simulation.

Nodes: each SuperNode holds one client's data and says which with its node config
``partition-id=<client>``; the ServerApp asks every node for it (a ``query`` message) before
round 1. Run config of the app: ``config-path`` (a :class:`FedRunConfig` JSON on the server
machine), ``out`` (folder for ``final.safetensors`` and ``metrics.json``) and ``timeout``
(seconds to wait for replies per round).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from sparseprior.common.checkpoint import save_safetensors_checkpoint
from sparseprior.common.runs import RunDir
from sparseprior.federated.client import ClientPlan
from sparseprior.federated.comm import LAYOUT_KEY, META_KEY, DecodeError, index_dtype
from sparseprior.federated.config import FedRunConfig
from sparseprior.federated.federation import Federation
from sparseprior.federated.simulation import FINAL_KIND, _accumulate

log = logging.getLogger(__name__)

server_app = ServerApp()
client_app = ClientApp()

PARTITION_KEY = "partition-id"


# ---------------------------------------------------------------------- blob <-> records


def blob_to_records(blob: bytes) -> tuple[ArrayRecord, dict[str, str]]:
    """A wire-format message as an ``ArrayRecord`` (masks as ``uint8``) and its header."""
    arrays = np_load(blob)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])["__metadata__"]
    out = {}
    for name, arr in arrays.items():
        out[name] = Array(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
                          if name.endswith(".mask") else arr)
    return ArrayRecord(out), {LAYOUT_KEY: header[LAYOUT_KEY], META_KEY: header[META_KEY]}


def records_to_blob(arrays: ArrayRecord, header: dict[str, str]) -> bytes:
    """Inverse of :func:`blob_to_records` (the exact bytes the simulation counts)."""
    try:
        layout = json.loads(header[LAYOUT_KEY])
    except (KeyError, ValueError, TypeError):
        raise DecodeError("malformed", "message without a layout") from None
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        arr = array.numpy()
        if name.endswith(".mask"):
            entry = layout.get(name[:-5], {})
            if entry.get("enc") == "indices":
                numel = int(np.prod(entry.get("shape", [0])))
                itemsize = np.dtype(index_dtype(numel)).itemsize
                if arr.dtype != np.uint8 or arr.size % itemsize:
                    raise DecodeError("shape", f"mask {name!r} has a bad byte count")
                arr = arr.view(index_dtype(numel))
        out[name] = arr
    return np_save(out, metadata={LAYOUT_KEY: header[LAYOUT_KEY],
                                  META_KEY: header.get(META_KEY, "{}")})


def _content(blob: bytes, config: dict[str, Any]) -> RecordDict:
    arrays, header = blob_to_records(blob)
    return RecordDict({"model": arrays, "header": ConfigRecord(header),
                       "config": ConfigRecord(config)})


def _blob_of(content: RecordDict) -> bytes:
    return records_to_blob(content.array_records["model"],
                           dict(content.config_records["header"]))


# ---------------------------------------------------------------------- ServerApp


def _partitions(grid: Grid, needed: int, timeout: float) -> dict[int, int]:
    """client (partition) id -> node id, asking every connected node; waits up to ``timeout``
    seconds for ``needed`` nodes."""
    deadline = time.monotonic() + timeout
    mapping: dict[int, int] = {}
    asked: set[int] = set()
    while time.monotonic() < deadline:
        nodes = [n for n in grid.get_node_ids() if n not in asked]
        if nodes:
            msgs = [Message(RecordDict({}), dst_node_id=n, message_type="query") for n in nodes]
            for reply in grid.send_and_receive(msgs, timeout=max(1.0, deadline - time.monotonic())):
                if reply.has_error():
                    continue
                part = int(reply.content.config_records["node"][PARTITION_KEY])
                mapping[part] = reply.metadata.src_node_id
            asked.update(nodes)
        if len(mapping) >= needed:
            break
        time.sleep(0.5)
    return mapping


def flower_collect(grid: Grid, node_of: dict[int, int], config_json: str, timeout: float):
    """A ``collect`` function for :meth:`Federation.run_round` over Flower messages."""

    def collect(clients: list[int], blob: bytes, plans: list[ClientPlan]) -> list[bytes | None]:
        msgs, sent = [], []
        for k, plan in zip(clients, plans, strict=True):
            if k not in node_of:
                continue
            cfg = {"client": k, "round": plan.round, "seed": plan.seed,
                   "readjust_fraction": float(plan.readjust_fraction),
                   "readjust_epoch": plan.readjust_epoch, "fed_config": config_json}
            msgs.append(Message(_content(blob, cfg), dst_node_id=node_of[k],
                                message_type="train", group_id=str(plan.round)))
            sent.append(k)
        by_node: dict[int, bytes] = {}
        for reply in grid.send_and_receive(msgs, timeout=timeout):
            if reply.has_error():
                log.warning("client on node %s failed: %s", reply.metadata.src_node_id,
                            reply.error.reason)
                continue
            try:
                by_node[reply.metadata.src_node_id] = _blob_of(reply.content)
            except (DecodeError, KeyError, ValueError) as err:
                log.warning("unreadable reply from node %s: %s", reply.metadata.src_node_id,
                            err)
        return [by_node.get(node_of[k]) if k in node_of else None for k in clients]

    return collect


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run ``config.rounds`` FedDST (or any registered strategy) rounds over the grid."""
    cfg_path = str(context.run_config.get("config-path", ""))
    if not cfg_path:
        raise ValueError("run config 'config-path' is empty: pass --run-config "
                         "\"config-path='/path/config.json' out='/path/out'\"")
    config = FedRunConfig.from_json(cfg_path)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = RunDir(str(context.run_config.get("out", "runs/fed/flower")))
    timeout = float(context.run_config.get("timeout", 600.0))
    fed = Federation(config)
    node_of = _partitions(grid, min(config.clients, config.per_round), timeout)
    log.info("nodes by client id: %s", node_of)
    collect = flower_collect(grid, node_of, config.to_json(), timeout)
    state, history = fed.initial_state(), []
    while state.round < config.rounds:
        result = fed.run_round(state, collect=collect)
        state, record = result.state, result.record
        if state.round == config.rounds or state.round % config.eval_every == 0:
            record.update(fed.evaluate(state))
        _accumulate(record, history)
        history.append(record)
        log.info("round %d: %d accepted, %d failed, %s rejected", state.round,
                 record["accepted"], record["failed"], record["rejected"])
    out.write_json("metrics.json", history)
    save_safetensors_checkpoint(out.file("final"), state.weights,
                                {"strategy": config.strategy, "engine": "flower"},
                                kind=FINAL_KIND)


# ---------------------------------------------------------------------- ClientApp

_FEDERATIONS: dict[str, Federation] = {}


def _federation(config_json: str) -> Federation:
    if config_json not in _FEDERATIONS:  # a long-lived ClientApp process reuses its data
        _FEDERATIONS.clear()
        config = FedRunConfig.from_dict(json.loads(config_json))
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        _FEDERATIONS[config_json] = Federation(config)
    return _FEDERATIONS[config_json]


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    """Tell the server which client's data this node holds."""
    part = int(context.node_config[PARTITION_KEY])
    return Message(RecordDict({"node": ConfigRecord({PARTITION_KEY: part})}), reply_to=msg)


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's client data; reply with the update."""
    cfg = msg.content.config_records["config"]
    client = int(cfg["client"])
    part = int(context.node_config[PARTITION_KEY])
    if client != part:
        raise ValueError(f"this node holds client {part}'s data, asked to train client {client}")
    fed = _federation(str(cfg["fed_config"]))
    plan = ClientPlan(int(cfg["round"]), int(cfg["seed"]), float(cfg["readjust_fraction"]),
                      int(cfg["readjust_epoch"]))
    reply = fed.local_reply(client, _blob_of(msg.content), plan)
    arrays, header = blob_to_records(reply)
    return Message(RecordDict({"model": arrays, "header": ConfigRecord(header)}), reply_to=msg)


# ---------------------------------------------------------------------- the app folder

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "sparseprior-feddst"
version = "1.0.0"
description = "FedDST with sparseprior (ServerApp/ClientApp in sparseprior.federated)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "sparseprior"

[tool.flwr.app.components]
serverapp = "sparseprior.federated.flower_app:server_app"
clientapp = "sparseprior.federated.flower_app:client_app"

[tool.flwr.app.config]
config-path = ""
out = "runs/fed/flower"
timeout = 600.0
"""


def write_app_dir(folder: str | Path) -> Path:
    """Write the Flower App folder (``pyproject.toml``) that ``flwr run`` ships; the apps
    themselves are imported from the installed ``sparseprior``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT)
    (folder / "README.md").write_text("FedDST app: components live in sparseprior.federated."
                                      "flower_app (install sparseprior[fed] on every machine)."
                                      "\n")
    return folder
