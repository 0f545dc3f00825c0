"""ONE training run: model, optimizer and schedule from a RunConfig, the loop, eval, checkpoint, metrics.

    from fasttrick.engine import Session, train_run
    session = Session()                      # shared by every run of the process (data, compiled model)
    outcome = train_run(run_config, run_dir, session)

Grids of runs, run folders and the CLI live a floor up, in fasttrick.grid and fasttrick.train.
"""

from .array import array_key, train_array
from .checkpoint import CHECKPOINT, CheckpointError, StorageError, config_mismatch, read_checkpoint, writing
from .io import (
    TERMINAL,
    MetricRow,
    RunStatus,
    atomic_write,
    read_json,
    read_status,
    write_json,
    write_metrics,
    write_status,
)
from .optimizers import build_optimizer
from .run import EpochHook, Interrupted, Outcome, train_run
from .schedules import EpochSchedule, current_lr, lr_sequence
from .session import Runtime, Session, reinitialize, resolve_runtime

__all__ = [
    "CHECKPOINT",
    "TERMINAL",
    "CheckpointError",
    "EpochHook",
    "EpochSchedule",
    "Interrupted",
    "MetricRow",
    "Outcome",
    "RunStatus",
    "Runtime",
    "Session",
    "StorageError",
    "array_key",
    "atomic_write",
    "build_optimizer",
    "config_mismatch",
    "current_lr",
    "lr_sequence",
    "read_checkpoint",
    "read_json",
    "read_status",
    "reinitialize",
    "resolve_runtime",
    "train_array",
    "train_run",
    "write_json",
    "write_metrics",
    "write_status",
    "writing",
]
