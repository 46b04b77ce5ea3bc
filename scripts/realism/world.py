"""The realism layer's clock: settings, delayed state changes and the
record of what was created when.

Everything here is in-process state of the emulator: the layer runs moto in
its own Python process (server.py) and changes its models directly, so a
state that AWS reaches later (an instance `running`, a snapshot `completed`)
is reached later here too, whoever asks.
"""

import os
import threading
import time


def _seconds(name, default):
    return float(os.environ.get(name, default))


class Settings:
    """Each delay is AWS's documented behaviour made short enough for tests.

    REALISM_INSTANCE_PENDING_SECONDS    RunInstances -> `pending` for this long
    REALISM_INSTANCE_STOPPING_SECONDS   TerminateInstances -> `shutting-down`
    REALISM_SNAPSHOT_PENDING_SECONDS    CreateSnapshot(s) / CompleteSnapshot -> `pending`
    REALISM_VOLUME_CREATING_SECONDS     CreateVolume -> `creating`
    REALISM_IMAGE_PENDING_SECONDS       RegisterImage / CreateImage -> `pending`
    REALISM_NOT_FOUND_SECONDS           Describe-by-id answers NotFound after a create
    REALISM_SSM_NOT_FOUND_SECONDS       GetCommandInvocation answers InvocationDoesNotExist
                                        (ListCommandInvocations: nothing) after SendCommand
    REALISM_SSM_DELIVERY_TIMEOUT_SCALE  a command not delivered within TimeoutSeconds times
                                        this is Delivery Timed Out (SendCommand refuses
                                        TimeoutSeconds under 30: tests shrink the wait here)
    REALISM_EBS_BLOCK_RPS               GetSnapshotBlock / PutSnapshotBlock per snapshot per second
    REALISM_EBS_ACCOUNT_BLOCK_RPS       GetSnapshotBlock / PutSnapshotBlock per account per second
    REALISM_EBS_LIST_RPS                ListSnapshotBlocks / ListChangedBlocks per account per second
    REALISM_EBS_START_RPS               StartSnapshot / CompleteSnapshot per account per second
    REALISM_RDS_SNAPSHOT_SECONDS        CreateDBSnapshot / CreateDBClusterSnapshot -> `creating`
                                        (and the DB instance `backing-up`)
    REALISM_RDS_COPY_SECONDS            CopyDBSnapshot / CopyDBClusterSnapshot -> `copying`
    REALISM_RDS_MANUAL_SNAPSHOT_QUOTA   manual DB snapshots per account and Region (manual
                                        DB cluster snapshots: as many again, counted apart)
    """

    def __init__(self):
        self.instance_pending = _seconds("REALISM_INSTANCE_PENDING_SECONDS", 2)
        self.instance_stopping = _seconds("REALISM_INSTANCE_STOPPING_SECONDS", 2)
        self.snapshot_pending = _seconds("REALISM_SNAPSHOT_PENDING_SECONDS", 2)
        self.volume_creating = _seconds("REALISM_VOLUME_CREATING_SECONDS", 1)
        self.image_pending = _seconds("REALISM_IMAGE_PENDING_SECONDS", 2)
        self.not_found = _seconds("REALISM_NOT_FOUND_SECONDS", 1)
        # "The Run Command API follows an eventual consistency model"
        # (GetCommandInvocation, SSM API Reference): right after SendCommand
        # the invocation is not there yet (aws/aws-sdk#86, boto/boto3#2701).
        self.ssm_not_found = _seconds("REALISM_SSM_NOT_FOUND_SECONDS", 1)
        self.ssm_delivery_timeout_scale = _seconds("REALISM_SSM_DELIVERY_TIMEOUT_SCALE", 1)
        # The EBS direct APIs' quotas, per account and Region ("Quotas for
        # Amazon EBS", EBS User Guide; "Amazon EBS endpoints and quotas",
        # AWS General Reference). CompleteSnapshot's 10 per second was read
        # there; the other figures are issue #14's and the ones commonly
        # cited (GetSnapshotBlock and PutSnapshotBlock 1,000 per second per
        # snapshot and 5,000 per account, the list calls 50 per second per
        # account, StartSnapshot 10): check your account's Service Quotas
        # console. src/mover/pace.rs says the same.
        self.ebs_block_rps = _seconds("REALISM_EBS_BLOCK_RPS", 1000)
        self.ebs_account_block_rps = _seconds("REALISM_EBS_ACCOUNT_BLOCK_RPS", 5000)
        self.ebs_list_rps = _seconds("REALISM_EBS_LIST_RPS", 50)
        self.ebs_start_rps = _seconds("REALISM_EBS_START_RPS", 10)
        # RDS snapshots take minutes on AWS; PercentProgress moves meanwhile.
        self.rds_snapshot = _seconds("REALISM_RDS_SNAPSHOT_SECONDS", 3)
        self.rds_copy = _seconds("REALISM_RDS_COPY_SECONDS", 4)
        # A change of a DB instance's security groups applies within
        # seconds to minutes; meanwhile the instance is `modifying`.
        self.rds_modify = _seconds("REALISM_RDS_MODIFY_SECONDS", 2)
        # "Manual DB instance snapshots: 100" and "Manual DB cluster
        # snapshots: 100" per Region, adjustable ("Quotas in Amazon RDS",
        # RDS User Guide); automated snapshots do not count.
        self.rds_manual_snapshot_quota = int(os.environ.get("REALISM_RDS_MANUAL_SNAPSHOT_QUOTA", 100))

    def as_dict(self):
        return dict(self.__dict__)


class World:
    """Scheduled state changes, run before each request is served (and by a
    ticker thread, so that nothing depends on traffic to move on)."""

    def __init__(self, settings):
        self.settings = settings
        self.lock = threading.RLock()
        # key -> (deadline, callback); a key names one pending change of one
        # resource, so a later schedule for it replaces the earlier one.
        self._changes = {}
        # resource id -> monotonic time of its creation
        self._created = {}
        self.counters = {}

    def now(self):
        return time.monotonic()

    def count(self, what):
        with self.lock:
            self.counters[what] = self.counters.get(what, 0) + 1

    def later(self, key, seconds, callback):
        with self.lock:
            self._changes[key] = (self.now() + seconds, callback)

    def cancel(self, key):
        with self.lock:
            self._changes.pop(key, None)

    def pending(self, key):
        with self.lock:
            return key in self._changes

    def created(self, resource_id):
        with self.lock:
            self._created[resource_id] = self.now()

    def fresh(self, resource_id, seconds=None):
        """Whether a Describe by this id still misses it (eventual consistency):
        for `seconds` after its creation (default: REALISM_NOT_FOUND_SECONDS)."""
        seconds = self.settings.not_found if seconds is None else seconds
        with self.lock:
            at = self._created.get(resource_id)
        return at is not None and self.now() - at < seconds

    def advance(self):
        with self.lock:
            now = self.now()
            due = [(k, cb) for k, (t, cb) in self._changes.items() if t <= now]
            for k, _ in due:
                del self._changes[k]
            # Old creation records no longer hide anything.
            if len(self._created) > 10000:
                horizon = now - max(self.settings.not_found, self.settings.ssm_not_found)
                self._created = {k: t for k, t in self._created.items() if t > horizon}
        for _, cb in due:
            try:
                cb()
            except Exception as e:  # a resource deleted meanwhile
                print(f"realism: scheduled change failed: {e!r}", flush=True)

    def start_ticker(self):
        def tick():
            while True:
                time.sleep(0.1)
                self.advance()

        threading.Thread(target=tick, daemon=True, name="realism-ticker").start()


class RateLimiter:
    """Requests per second per key, over a sliding one-second window."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = {}

    def allow(self, key, per_second):
        now = time.monotonic()
        with self._lock:
            window = [t for t in self._seen.get(key, []) if now - t < 1.0]
            if len(window) >= per_second:
                self._seen[key] = window
                return False
            window.append(now)
            self._seen[key] = window
            return True
