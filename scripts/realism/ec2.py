"""EC2 as AWS documents it, patched into moto's models.

- Instances are `pending` before `running` and `shutting-down` before
  `terminated` (EC2 User Guide, "Instance state changes").
- Snapshots are `pending` before `completed`, with a progress that moves;
  a snapshot started with the EBS direct APIs stays `pending` until
  CompleteSnapshot, and a while after it.
- Volumes are `creating` before `available`; images `pending` before
  `available`.
- CreateVolume, RunInstances and RegisterImage refuse a snapshot that is
  not `completed` (IncorrectState), as EC2 does.
- RegisterImage keeps what it is given (architecture, boot mode, ENA,
  SR-IOV, virtualization type, root device, block device mappings) and
  defaults the architecture to i386 as the API does; RunInstances builds an
  instance's volumes from its image's mappings and refuses an instance type
  whose architectures do not include the image's.
- Volumes created from a snapshot keep its encryption; snapshots keep their
  volume's key.
- A default VPC has an internet gateway and a default route to it.
- GetConsoleOutput answers what the instance wrote to its console (the test
  booter records it), not moto's fixed boot log.
"""

import os

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import EC2Backend
from moto.ec2.models.amis import Ami
from moto.ec2.models.elastic_block_store import Snapshot, Volume
from moto.ec2.models.instance_types import INSTANCE_TYPES
from moto.ec2.responses.amis import AmisResponse

from world import World

_world: World = None  # set by install()


def _set_state(instance, name, code):
    instance._state.name = name
    instance._state.code = code


def _patch_instances():
    run = EC2Backend.run_instances
    terminate = EC2Backend.terminate_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        image = self.amis.get(image_id)
        bdm = getattr(image, "_realism_bdm", None) if image else None
        if image is not None:
            _check_architecture(image, kwargs.get("instance_type"))
        if bdm and "block_device_mappings" not in kwargs:
            kwargs["block_device_mappings"] = bdm
        for m in kwargs.get("block_device_mappings") or []:
            snapshot_id = (m.get("Ebs") or {}).get("SnapshotId")
            if snapshot_id:
                _require_completed(self, snapshot_id)
        profile = _instance_profile(self, kwargs)
        reservation = run(self, image_id, count, user_data, security_group_names, **kwargs)
        for instance in reservation.instances:
            if image is not None:
                # DescribeInstances reports the image's boot mode, the mode
                # the instance booted in, and ENA support (moto: none).
                instance.boot_mode = getattr(image, "boot_mode", None)
                instance.current_instance_boot_mode = (
                    "uefi" if instance.boot_mode in ("uefi", "uefi-preferred") else "legacy-bios"
                )
                instance.ena_support = bool(getattr(image, "ena_support", False))
            if profile is not None:
                instance.iam_instance_profile = {"Arn": profile.arn, "Id": profile.id}
            _set_state(instance, "pending", 0)
            _world.created(instance.id)
            _world.later(
                ("instance", instance.id),
                _world.settings.instance_pending,
                lambda i=instance: i._state.name == "pending" and _set_state(i, "running", 16),
            )
        return reservation

    def terminate_instances(self, instance_ids):
        before = {i: self.get_instance(i)._state.name for i in instance_ids}
        result = terminate(self, instance_ids)
        for instance, _previous in result:
            if before.get(instance.id) in ("terminated",):
                continue
            _set_state(instance, "shutting-down", 32)
            _world.later(
                ("instance", instance.id),
                _world.settings.instance_stopping,
                lambda i=instance: _set_state(i, "terminated", 48),
            )
        return result

    EC2Backend.run_instances = run_instances
    EC2Backend.terminate_instances = terminate_instances


def _instance_profile(backend, kwargs):
    """The instance profile RunInstances names (moto drops it), which must
    exist: EC2 answers InvalidParameterValue for one IAM does not have."""
    name = kwargs.get("iam_instance_profile_name")
    arn = kwargs.get("iam_instance_profile_arn")
    if not name and not arn:
        return None
    from moto.iam.models import iam_backends

    for p in iam_backends[backend.account_id]["aws"].get_instance_profiles():
        if (arn and p.arn == arn) or (name and p.name == name):
            return p
    raise EC2ClientError(
        "InvalidParameterValue",
        f"Value ({name or arn}) for parameter iamInstanceProfile.{'name' if name else 'arn'} "
        "is invalid. Invalid IAM Instance Profile name",
    )


def _check_architecture(image, instance_type):
    info = INSTANCE_TYPES.get(instance_type or "m1.small") or {}
    supported = (info.get("ProcessorInfo") or {}).get("SupportedArchitectures")
    arch = image.architecture
    if supported and arch and arch not in supported:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"The architecture '{arch}' of the specified AMI is not supported by "
            f"the instance type '{instance_type}' ({', '.join(supported)}).",
        )


def _require_completed(backend, snapshot_id):
    snapshot = backend.snapshots.get(snapshot_id)
    if snapshot is None:
        raise EC2ClientError(
            "InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist."
        )
    if snapshot.status != "completed":
        raise EC2ClientError(
            "IncorrectState",
            f"Snapshot '{snapshot_id}' is in state '{snapshot.status}', not 'completed'.",
        )


def complete_later(snapshot, seconds=None):
    """Moves a pending snapshot to `completed` after the configured delay."""
    seconds = _world.settings.snapshot_pending if seconds is None else seconds
    snapshot._realism_started = _world.now()
    snapshot._realism_seconds = seconds

    def done():
        snapshot.status = "completed"
        ebs = getattr(snapshot, "_realism_ebs", None)
        if ebs is not None:
            ebs.status = "completed"

    _world.later(("snapshot", snapshot.id), seconds, done)


def _patch_snapshots():
    create = EC2Backend.create_snapshot

    def create_snapshot(self, volume_id, description, owner_id=None, from_ami=None):
        snapshot = create(self, volume_id, description, owner_id, from_ami)
        volume = snapshot.volume
        if getattr(volume, "kms_key_id", None):
            snapshot.kms_key_id = volume.kms_key_id
        snapshot.status = "pending"
        _world.created(snapshot.id)
        # EBS-started snapshots wait for CompleteSnapshot (ebs.py cancels this).
        complete_later(snapshot)
        from ebs import serve_source_blocks

        serve_source_blocks(self, snapshot)
        return snapshot

    def progress(self):
        if self.status == "completed":
            return "100%"
        started = getattr(self, "_realism_started", None)
        if started is None or not _world.pending(("snapshot", self.id)):
            return "0%"
        seconds = getattr(self, "_realism_seconds", 1) or 1
        return f"{min(99, int(100 * (_world.now() - started) / seconds))}%"

    EC2Backend.create_snapshot = create_snapshot
    Snapshot.progress = property(progress)


def _patch_volumes():
    create = EC2Backend.create_volume

    def create_volume(self, size, zone_name, snapshot_id=None, encrypted=False, kms_key_id=None, **kw):
        if snapshot_id:
            _require_completed(self, snapshot_id)
            source = self.snapshots[snapshot_id]
            if source.encrypted and not encrypted:
                encrypted, kms_key_id = True, kms_key_id or source.kms_key_id
            if size is None:
                size = source.volume.size
        volume = create(self, size, zone_name, snapshot_id, encrypted, kms_key_id, **kw)
        volume._realism_creating = True
        _world.created(volume.id)
        _world.later(
            ("volume", volume.id),
            _world.settings.volume_creating,
            lambda: setattr(volume, "_realism_creating", False),
        )
        return volume

    def status(self):
        if self.attachment:
            return "in-use"
        return "creating" if getattr(self, "_realism_creating", False) else "available"

    EC2Backend.create_volume = create_volume
    Volume.status = property(status)


def _image_pending(ami):
    ami.state = "pending"
    _world.created(ami.id)
    _world.later(
        ("image", ami.id),
        _world.settings.image_pending,
        lambda: ami.state == "pending" and setattr(ami, "state", "available"),
    )


def _register_image(self):
    """RegisterImage with what AWS keeps of it (moto keeps only the name)."""
    self.error_on_dryrun()
    name = self._get_param("Name")
    if not name:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter name")
    mappings = self._get_param("BlockDeviceMappings", []) or []
    root = self._get_param("RootDeviceName")
    devices = [m.get("DeviceName") for m in mappings]
    if mappings and root not in devices:
        raise EC2ClientError(
            "InvalidBlockDeviceMapping",
            f"The root device name '{root}' is not in the block device mappings.",
        )
    for m in mappings:
        snapshot_id = (m.get("Ebs") or {}).get("SnapshotId")
        if snapshot_id:
            _require_completed(self.ec2_backend, snapshot_id)
    ami = self.ec2_backend.register_image(name, self._get_param("Description", ""))
    # The API's defaults: i386, paravirtual is gone (hvm), no ENA.
    ami.architecture = self._get_param("Architecture") or "i386"
    ami.virtualization_type = self._get_param("VirtualizationType") or "hvm"
    ami.boot_mode = self._get_param("BootMode")
    ami.ena_support = bool(self._get_param("EnaSupport"))
    ami.sriov = self._get_param("SriovNetSupport")
    ami.root_device_type = "ebs"
    if root:
        ami.root_device_name = root
    if mappings:
        ami._realism_bdm = mappings
    for spec in self._get_param("TagSpecifications", []) or []:
        if spec.get("ResourceType") == "image":
            ami.add_tags({t["Key"]: t["Value"] for t in spec.get("Tags", [])})
    _image_pending(ami)
    from moto.core.responses import ActionResult

    return ActionResult({"ImageId": ami.id})


def _patch_images():
    create = EC2Backend.create_image

    def create_image(self, *args, **kwargs):
        ami = create(self, *args, **kwargs)
        _image_pending(ami)
        return ami

    original_bdm = Ami.block_device_mappings

    def block_device_mappings(self):
        registered = getattr(self, "_realism_bdm", None)
        return registered if registered is not None else original_bdm.fget(self)

    EC2Backend.create_image = create_image
    Ami.block_device_mappings = property(block_device_mappings)
    AmisResponse.register_image = _register_image


def _patch_security_groups():
    create = EC2Backend.create_security_group

    def create_security_group(self, *args, **kwargs):
        group = create(self, *args, **kwargs)
        _world.created(group.id)
        return group

    EC2Backend.create_security_group = create_security_group
    delete = EC2Backend.delete_security_group

    def delete_security_group(self, name=None, group_id=None):
        """DeleteSecurityGroup refuses with DependencyViolation while a
        network interface is in the group (an instance until it is
        terminated, so also while it is shutting down; a DB instance until
        ModifyDBInstance removed it) or another group's rule names it (EC2
        API Reference, DeleteSecurityGroup; "Delete a security group", VPC
        User Guide)."""
        from moto.ec2.exceptions import DependencyViolationError

        if group_id:
            user = _group_user(self, group_id)
            if user:
                _world.count("ec2:DependencyViolation")
                raise DependencyViolationError(f"resource {group_id} has a dependent object ({user})")
        return delete(self, name=name, group_id=group_id)

    EC2Backend.delete_security_group = delete_security_group


def _group_user(backend, group_id):
    """What still uses security group `group_id`, or None."""
    for instance in backend.all_instances():
        if instance._state.name == "terminated":
            continue
        for nic in instance.nics.values():
            if any(getattr(g, "id", None) == group_id for g in nic.group_set):
                return f"instance {instance.id}"
    for groups in backend.groups.values():
        for group in groups.values():
            if group.id == group_id:
                continue
            for rule in list(group.ingress_rules) + list(group.egress_rules):
                if (rule.source_group or {}).get("GroupId") == group_id:
                    return f"a rule of {group.id}"
    try:
        from moto.rds.models import rds_backends

        rds = rds_backends[backend.account_id][backend.region_name]
        from rds import attached_groups

        for db in rds.databases.values():
            if any(g == group_id for g, _ in attached_groups(db)):
                return f"DB instance {db.db_instance_identifier}"
    except KeyError:
        pass
    return None


def _patch_default_vpc():
    """A default VPC comes with an internet gateway and a 0.0.0.0/0 route to
    it in its main route table ("Default VPCs", Amazon VPC User Guide);
    moto's has neither, and Tender checks that workers have a way out."""
    create = EC2Backend.create_default_vpc

    def create_default_vpc(self):
        vpc = create(self)
        igw = self.create_internet_gateway()
        self.attach_internet_gateway(igw.id, vpc.id)
        main = self.describe_route_tables(
            filters={"vpc-id": [vpc.id], "association.main": ["true"]}
        )
        if main:
            self.create_route(main[0].id, "0.0.0.0/0", gateway_id=igw.id)
        return vpc

    EC2Backend.create_default_vpc = create_default_vpc


# Where the test booter records each instance's console (the user data's
# output): `<dir>/<instance-id>`. Set by server.py from --console-dir.
CONSOLE_DIR = None
# GetConsoleOutput returns at most the last 64 KB ("GetConsoleOutput", EC2
# API Reference).
CONSOLE_LIMIT = 64 * 1024


def _patch_console_output():
    """GetConsoleOutput answers what the instance wrote to its console, as
    the test booter recorded it, and no output before it wrote any (AWS:
    the output is posted shortly after boot; until then `Output` is
    absent). moto's own answer is a fixed Linux boot log."""
    from moto.ec2.responses import general
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow

    def get_console_output(self):
        instance_id = self._get_param("InstanceId")
        instance = self.ec2_backend.get_instance(instance_id)
        result = {"InstanceId": instance.id, "Timestamp": utcnow()}
        path = os.path.join(CONSOLE_DIR or "", instance.id)
        if CONSOLE_DIR and os.path.exists(path):
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - CONSOLE_LIMIT))
                text = f.read().decode("utf-8", "replace")
            result["Output"] = general.Base64EncodedString.from_raw_string(text)
        _world.count("console-output")
        return ActionResult(result)

    general.General.get_console_output = get_console_output


def install(world):
    global _world
    _world = world
    _patch_console_output()
    _patch_instances()
    _patch_snapshots()
    _patch_volumes()
    _patch_images()
    _patch_security_groups()
    _patch_default_vpc()
