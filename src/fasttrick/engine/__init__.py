"""ONE training run: model, optimizer and schedule from a RunConfig, the loop, eval, checkpoints, metrics.

    from fasttrick.engine import Session, train_run
    session = Session()                      # shared by every run of the process (data, compiled model)
    outcome = train_run(run_config, run_dir, session)

Grids of runs, run folders and the CLI live a floor up, in fasttrick.grid and fasttrick.train.
"""

from .io import atomic_write, read_status, write_json, write_metrics, write_status
from .optimizers import build_optimizer
from .run import CHECKPOINT, Interrupted, Outcome, Runtime, Session, reinitialize, resolve_runtime, train_run
from .schedules import EpochSchedule, current_lr, lr_sequence

__all__ = [
    "CHECKPOINT",
    "EpochSchedule",
    "Interrupted",
    "Outcome",
    "Runtime",
    "Session",
    "atomic_write",
    "build_optimizer",
    "current_lr",
    "lr_sequence",
    "read_status",
    "reinitialize",
    "resolve_runtime",
    "train_run",
    "write_json",
    "write_metrics",
    "write_status",
]
