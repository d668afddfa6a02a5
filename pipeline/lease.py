"""The promotion lease: one promote (or rollback) at a time, across every machine sharing a registry.

Promote reads `champion`, decides, and moves `champion` and `previous-champion`; the registry has
no compare-and-set for aliases, so two promotions at once could both judge against vN and both
move it, losing a `previous-champion`. A file lock only covers processes on one machine; the
lease is held in the registry itself, so it works the same through `mlflow server` (any database)
and on a local SQLite file.

What it relies on: creating a registered model is atomic and fails with RESOURCE_ALREADY_EXISTS
when the name exists (the name is the table's primary key, in every SQL store). So:

- **Acquire**: create the registered model `california-housing.promote-lease`, tagged with a
  holder id unique to this acquisition. Whoever creates it holds the lease; the others wait,
  polling, and proceed as soon as it is gone.
- **Renew**: while it holds the lease, a thread of the holder bumps the `lease.heartbeat` tag
  every `ttl / 4` seconds.
- **Stale**: a waiter that sees the same holder and heartbeat for `ttl` seconds of its own clock
  (no clocks are compared across machines) takes the holder for dead: killed, or its machine
  gone.
- **Take over**: only one waiter may remove a stale lease: the one that creates the marker
  `california-housing.promote-lease.takeover-<holder id>` (atomic, as above), tagged with its own
  id. Just before deleting the lease it reads both again and goes on only if the lease still names
  the dead holder and the marker is still its own; then it deletes its marker and competes to
  acquire like anyone else. A later waiter that gets the marker finds another holder's lease and
  leaves it. A marker left by a waiter that died mid-take-over is taken for stale after twice its
  maker's `ttl` (tagged on it), so a taker that is merely slow keeps it, and removed.
- **Release**: the holder deletes the lease in `finally`, if it still names it; a registry that
  cannot be reached then is logged and left to the TTL, never raised over the block's own error.

The assumption, as for every lease: a holder that is alive renews within `ttl`. A process
stopped longer than that (SIGSTOP, a suspended laptop) loses the lease; it notices when it next
checks (`check_held`) or renews. The registry has no conditional delete, so each read-then-delete
above (take-over, release) leaves a short window in which a process stopped right there can
delete a lease that has just changed hands. What guarantees that no two promotions move aliases
at once is that promote calls `check_held()` immediately before it moves any alias: a holder whose
lease was deleted or replaced stops there with nothing moved.

Both names show in the registry's model list; their description says what they are. The lease
exists only while a promotion runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config import MODEL_NAME
from pipeline.errors import PipelineError
from pipeline.registry import unless_absent

log = logging.getLogger(__name__)

LEASE_NAME = f"{MODEL_NAME}.promote-lease"
TAKEOVER_PREFIX = f"{LEASE_NAME}.takeover-"
HOLDER_TAG = "lease.holder"
HEARTBEAT_TAG = "lease.heartbeat"
TTL_TAG = "lease.ttl_seconds"
# A holder renews 4 times per TTL: one late or failed renewal never makes it look dead.
DEFAULT_TTL = 60.0
# How long a promotion waits for others before giving up.
DEFAULT_WAIT = 1800.0
POLL = 0.25

_DESCRIPTION = (
    "Not a model: the lease that lets one 'python -m pipeline promote' at a time move the aliases of "
    f"{MODEL_NAME} (pipeline/lease.py). It exists only while a promotion runs; its holder renews "
    "tag lease.heartbeat, and a lease not renewed for lease.ttl_seconds may be taken over."
)


@dataclass(frozen=True)
class Lease:
    """A held lease: who holds it, for use in records and checks."""

    holder: str

    def check_held(self) -> None:
        """Raises PipelineError when the lease no longer names this holder (it went stale and was taken over)."""
        current = _read(LEASE_NAME)
        if current is None or current.tags.get(HOLDER_TAG) != self.holder:
            holder = current.tags.get(HOLDER_TAG) if current else None
            raise PipelineError(
                f"lost the promotion lease {LEASE_NAME!r} (now held by {holder or 'nobody'}): this process "
                "was stopped longer than the lease's time to live; nothing was moved, run it again"
            )


@contextmanager
def promotion_lease(ttl: float = DEFAULT_TTL, wait: float = DEFAULT_WAIT) -> Iterator[Lease]:
    """Holds the promotion lease while the block runs, waiting up to `wait` seconds for a live holder
    first; others may take it over after `ttl` seconds without a renewal.

    Raises:
        PipelineError: Another live holder kept the lease for `wait` seconds.
    """
    lease = Lease(f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}")
    _acquire(lease, ttl, wait)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease, ttl, stop), name="promote-lease", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        # Bounded: a renewal stuck in MLflow's HTTP retries (server down) must not hold up the exit.
        renewer.join(timeout=ttl / 4)
        _release(lease)


def _acquire(lease: Lease, ttl: float, wait: float) -> None:
    tags = {HOLDER_TAG: lease.holder, HEARTBEAT_TAG: "0", TTL_TAG: f"{ttl:g}"}
    watch = _Staleness()
    markers: dict[str, _Staleness] = {}
    deadline = time.monotonic() + wait
    announced = False
    while True:
        if _create(LEASE_NAME, tags) is not None:
            log.info("holding the promotion lease as %s", lease.holder)
            return
        current = _read(LEASE_NAME)
        holder = current.tags.get(HOLDER_TAG, "") if current is not None else ""
        # Gone (released between our create and our read) or removed by us: try again at once.
        freed = current is None or (watch.stale(current, default_ttl=ttl) and _take_over(lease, holder, ttl, markers))
        if time.monotonic() > deadline:
            raise PipelineError(
                f"the promotion lease {LEASE_NAME!r} was held by {holder or 'others'} for more than {wait:.0f} s; "
                "nothing was moved. If no promotion is running, delete that registered model"
            )
        if freed:
            continue
        if not announced:
            log.info("waiting for the promotion lease, held by %s", holder)
            announced = True
        time.sleep(POLL)


def _take_over(taker: Lease, stale_holder: str, ttl: float, markers: dict[str, _Staleness]) -> bool:
    """Removes the lease of a holder that stopped renewing, if this process wins the right to.

    `markers` watches the take-over markers other waiters hold, across calls of one acquisition.

    Returns:
        Whether this call deleted the lease.
    """
    marker = TAKEOVER_PREFIX + stale_holder.replace(":", "-")
    ours = _create(marker, {HOLDER_TAG: taker.holder, TTL_TAG: f"{2 * ttl:g}"})
    if ours is None:
        _remove_if_stale(marker, ttl, markers.setdefault(marker, _Staleness()))
        return False
    try:
        # Read both again right before the delete: had this process stalled for 2 * ttl since it
        # made the marker, another waiter may have removed the marker and taken the lease over.
        current, mine = _read(LEASE_NAME), _read(marker)
        if (
            current is None
            or current.tags.get(HOLDER_TAG) != stale_holder
            or mine is None
            or mine.tags.get(HOLDER_TAG) != taker.holder
            or mine.creation_timestamp != ours.creation_timestamp
        ):
            return False
        log.warning("taking over the promotion lease of %s, not renewed for %g s", stale_holder, ttl)
        _delete(LEASE_NAME)
        return True
    finally:
        _delete_if_ours(marker, taker)


def _remove_if_stale(marker: str, ttl: float, watch: _Staleness) -> None:
    """Deletes a take-over marker unchanged for its TTL (`2 * ttl` untagged): its maker died mid-take-over."""
    current = _read(marker)
    if current is not None and watch.stale(current, default_ttl=2 * ttl):
        log.warning("removing %s, left by a process that died while taking over the lease", marker)
        _delete(marker)


class _Staleness:
    """Watches one registered model; stale once it has stayed the same for its TTL on our own clock."""

    def __init__(self) -> None:
        self._seen: tuple[str, str, int] | None = None
        self._since = 0.0

    def stale(self, model: RegisteredModel, default_ttl: float) -> bool:
        state = (model.tags.get(HOLDER_TAG, ""), model.tags.get(HEARTBEAT_TAG, ""), model.creation_timestamp)
        now = time.monotonic()
        if state != self._seen:
            self._seen, self._since = state, now
            return False
        try:
            ttl = float(model.tags[TTL_TAG])
        except (KeyError, ValueError):
            ttl = default_ttl
        return now - self._since >= ttl


def _renew(lease: Lease, ttl: float, stop: threading.Event) -> None:
    client = MlflowClient()
    beat = 0
    while not stop.wait(ttl / 4):
        beat += 1
        try:
            lease.check_held()
            client.set_registered_model_tag(LEASE_NAME, HEARTBEAT_TAG, str(beat))
        except PipelineError as err:
            # Taken over: the block's own check before it moves anything stops it; renewing cannot help.
            # After `stop`, the lease is gone because the block released it: nothing to report.
            if not stop.is_set():
                log.error("%s", err)
            return
        except MlflowException as err:
            # A missed renewal is one of four per TTL; the next may get through.
            log.warning("could not renew the promotion lease: %s", err)


def _release(lease: Lease) -> None:
    """Deletes the lease if it still names this holder; never raises (runs in `finally`)."""
    try:
        if _delete_if_ours(LEASE_NAME, lease):
            log.info("released the promotion lease")
    except (MlflowException, OSError) as err:
        # Raising here would replace the block's own exception; the TTL frees the lease anyway.
        log.warning(
            "could not release the promotion lease %r, others may take it over after its TTL: %s", LEASE_NAME, err
        )


def _delete_if_ours(name: str, lease: Lease) -> bool:
    """Deletes `name` if it is tagged with this holder; read and delete back to back (no conditional delete exists)."""
    current = _read(name)
    if current is None or current.tags.get(HOLDER_TAG) != lease.holder:
        return False
    _delete(name)
    return True


def _create(name: str, tags: dict[str, str]) -> RegisteredModel | None:
    """Runs an atomic create; None when the name exists (or vanished while MLflow described the clash)."""
    create = partial(MlflowClient().create_registered_model, name, tags=tags, description=_DESCRIPTION)
    return unless_absent(create, ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"))


def _read(name: str) -> RegisteredModel | None:
    return unless_absent(partial(MlflowClient().get_registered_model, name))


def _delete(name: str) -> None:
    """Deletes a registered model; already gone is fine (another process removed it)."""
    unless_absent(partial(MlflowClient().delete_registered_model, name))
