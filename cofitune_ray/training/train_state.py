"""The training state a retried run continues from: trained parameters, AdamW state, LR schedule, data position.

At every evaluation point the workers save it as the run's Ray Train checkpoint (only the latest
is kept). When a worker dies and Tune retries the trial, the retry builds a TorchTrainer with the
same name and storage, so Ray Train hands that checkpoint back (`ray.train.get_checkpoint()`)
and the new attempt continues from the point: no optimizer step is done twice.

A state directory holds the trained parameters and the optimizer state in
torch.distributed.checkpoint (DCP) format (under FSDP each worker writes its own shards; under DDP
a replicated tensor is written once), `position.json` (where the run is, the LR schedule's state
and the number of workers; worker 0 writes it) and `rng-<rank>.pt` (each worker's random number
generator states). A state resumes only with the number of workers that saved it: each worker's
share of the data depends on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

POSITION_FILE = "position.json"
_TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)
# Loading sets the trained parameters only (the frozen ones are the base model's): not strict. Every
# trained parameter is still checked: `dcp.load` fails on a key the checkpoint lacks.
_LOAD_TRAINED = StateDictOptions(ignore_frozen_params=True, strict=False)


@dataclass(frozen=True)
class Position:
    """Where a run is: its next micro-batch is batch `batches` (0-based) of epoch `epoch`."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches: int = 0  # micro-batches of `epoch` already trained on
    evaluations: int = 0  # evaluation points done


def save_train_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule,
                     position: Position, rank: int, world_size: int) -> None:
    """Write this worker's part of the state to `directory` (every worker calls it: DCP is a collective)."""
    directory = Path(directory)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_TRAINED_ONLY)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)
    torch.save(_rng_states(), directory / f"rng-{rank}.pt")
    if rank == 0:
        saved = {"position": asdict(position), "workers": world_size, "schedule": schedule.state_dict()}
        (directory / POSITION_FILE).write_text(json.dumps(saved))


def read_position(directory: Path) -> Position:
    """The position a saved state is at (no tensors read)."""
    return Position(**json.loads((Path(directory) / POSITION_FILE).read_text())["position"])


def load_train_state(directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule,
                     rank: int, world_size: int) -> Position:
    """Restore the state saved in `directory` into a freshly built model, optimizer and schedule."""
    directory = Path(directory)
    saved = json.loads((directory / POSITION_FILE).read_text())
    if saved["workers"] != world_size:
        raise ValueError(f"{directory}: the training state was saved by {saved['workers']} workers; resume it with "
                         f"scaling.num_workers={saved['workers']} (this run has {world_size})")
    model_state, optimizer_state = get_state_dict(model, optimizer, options=_TRAINED_ONLY)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=directory)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_LOAD_TRAINED)
    schedule.load_state_dict(saved["schedule"])
    _set_rng_states(torch.load(directory / f"rng-{rank}.pt"))
    return Position(**saved["position"])


def _rng_states() -> dict:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
