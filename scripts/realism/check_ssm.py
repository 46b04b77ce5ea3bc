"""Checks the realism layer's Run Command (ssm.py) against a running layer.

    python scripts/realism/check_ssm.py [ENDPOINT]

ENDPOINT defaults to $AWS_ENDPOINT_URL (scripts/testenv env). The layer
must already run (this script starts nothing); it reads the layer's
settings from GET /realism/ and waits accordingly: the delivery-timeout
check waits 30 s times REALISM_SSM_DELIVERY_TIMEOUT_SCALE. It creates EC2
instances, agents and an IAM role in the emulator's account and leaves
them there (a test world is thrown away whole). Prints one line per check;
exits non-zero at the first that fails.
"""

import json
import os
import sys
import time
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ACCOUNT, REGION = "123456789012", "us-east-1"
SHELL, POWERSHELL = "AWS-RunShellScript", "AWS-RunPowerShellScript"
ENDPOINT = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AWS_ENDPOINT_URL", "")).rstrip("/")
ADMIN = boto3.session.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
# botocore checks ranges itself; the Rust SDK leaves them to the service.
RAW = Config(parameter_validation=False)


def ok(what):
    print(f"ok: {what}", flush=True)


def control(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(ENDPOINT + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def agent(instance_id, platform="Linux", ping="Online"):
    code, answer = control(
        "POST",
        "/realism/ssm/agents",
        {"account": ACCOUNT, "region": REGION, "instanceId": instance_id, "platform": platform, "ping": ping},
    )
    assert code == 200, answer
    return answer


def deliver(instance_id):
    """What `instance_id`'s agent receives (only its own: other tests may
    share the world)."""
    path = f"/realism/ssm/deliver?account={ACCOUNT}&region={REGION}&instanceId={instance_id}"
    code, answer = control("GET", path)
    assert code == 200, answer
    return answer


def report(command_id, instance_id, **result):
    return control("POST", f"/realism/ssm/invocations/{command_id}/{instance_id}", result)


def counters():
    return control("GET", "/realism/")[1]["counters"]


def refused(call, code, **kwargs):
    """Asserts that `call(**kwargs)` fails with error `code`; its message."""
    try:
        call(**kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"{call.__name__}: {got} ({e}), expected {code}"
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 400, e.response
        return e.response["Error"]["Message"]
    raise AssertionError(f"{call.__name__} {kwargs} was accepted, expected {code}")


def instances(ec2, count, tags):
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
    reservation = ec2.run_instances(
        ImageId=image, MinCount=count, MaxCount=count, InstanceType="t3.micro", TagSpecifications=spec
    )
    return [i["InstanceId"] for i in reservation["Instances"]]


def shell(ids, commands=("echo hello",), **kwargs):
    return dict(
        {"InstanceIds": ids, "DocumentName": SHELL, "Parameters": {"commands": list(commands)}},
        **kwargs,
    )


def check_describe(ssm, linux, windows, lost, bare):
    nodes = ssm.describe_instance_information(MaxResults=50)["InstanceInformationList"]
    listed = {n["InstanceId"]: n for n in nodes if n["InstanceId"] in (linux, windows, lost, bare)}
    assert set(listed) == {linux, windows, lost}, listed
    node = listed[linux]
    assert node["PingStatus"] == "Online" and node["PlatformType"] == "Linux", node
    assert node["ResourceType"] == "EC2Instance" and node["AgentVersion"] and node["PlatformName"], node
    assert "LastPingDateTime" in node and "IsLatestVersion" in node, node
    assert listed[lost]["PingStatus"] == "ConnectionLost", listed[lost]
    ok(f"DescribeInstanceInformation lists the 3 registered nodes, not {bare} (no agent)")
    by_id = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [bare, windows]}])
    assert [n["InstanceId"] for n in by_id["InstanceInformationList"]] == [windows], by_id
    assert "NextToken" not in by_id, by_id
    ok("Filters InstanceIds: an instance without an agent is absent, not an error")
    mine = [{"Key": "InstanceIds", "Values": [linux, windows, lost]}]
    online = ssm.describe_instance_information(Filters=mine + [{"Key": "PingStatus", "Values": ["Online"]}])
    assert {n["InstanceId"] for n in online["InstanceInformationList"]} == {linux, windows}, online
    win = ssm.describe_instance_information(
        InstanceInformationFilterList=[
            {"key": "InstanceIds", "valueSet": [linux, windows, lost]},
            {"key": "PlatformTypes", "valueSet": ["Windows"]},
        ]
    )
    assert [n["InstanceId"] for n in win["InstanceInformationList"]] == [windows], win
    ok("Filters PingStatus and InstanceInformationFilterList PlatformTypes")
    refused(ssm.describe_instance_information, "ValidationException", MaxResults=4)
    refused(ssm.describe_instance_information, "ValidationException", MaxResults=51)
    unknown = [{"Key": "InstanceIds", "Values": ["i-0123456789abcdef0"]}]
    refused(ssm.describe_instance_information, "InvalidInstanceId", Filters=unknown)
    refused(ssm.describe_instance_information, "InvalidFilterKey", Filters=[{"Key": "Color", "Values": ["x"]}])
    ok("MaxResults 4 / 51: ValidationException; unknown instance: InvalidInstanceId; bad key: InvalidFilterKey")


def check_refusals(ssm, linux, windows, lost, bare):
    refused(ssm.send_command, "InvalidDocument", **dict(shell([linux]), DocumentName="No-Such-Doc"))
    refused(ssm.send_command, "InvalidParameters", **dict(shell([linux]), Parameters={}))
    refused(ssm.send_command, "InvalidParameters", **shell([linux], commands=()))
    unknown = {"commands": ["x"], "x": ["1"]}
    refused(ssm.send_command, "InvalidParameters", **dict(shell([linux]), Parameters=unknown))
    ok("InvalidDocument; InvalidParameters for no commands, empty commands, unknown parameter")
    for who, why in ((bare, "no agent"), (lost, "ConnectionLost"), ("i-0123456789abcdef0", "no such instance")):
        message = refused(ssm.send_command, "InvalidInstanceId", **shell([linux, who]))
        assert message == f"Instances [[{who}]] not in a valid state for account {ACCOUNT}", message
        ok(f"InvalidInstanceId ({why}): {message}")
    refused(ssm.send_command, "UnsupportedPlatformType", **shell([windows]))
    refused(ssm.send_command, "UnsupportedPlatformType", **dict(shell([linux]), DocumentName=POWERSHELL))
    ok("UnsupportedPlatformType: ShellScript on Windows, PowerShell on Linux")
    refused(ssm.send_command, "ValidationException", **shell([linux], TimeoutSeconds=29))
    refused(ssm.send_command, "ValidationException", **shell([linux], TimeoutSeconds=2592001))
    ok("TimeoutSeconds 29 / 2592001 -> ValidationException")
    assert not ssm.list_commands(InstanceId=linux)["Commands"], "a refused SendCommand left a command"
    ok("no command recorded by the refusals")


def check_run(ssm, settings, linux, windows):
    before = counters().get("ssm:invocation-not-found", 0)
    request = shell([linux], commands=("echo a", "echo b"), Comment="tender-check")
    command = ssm.send_command(**request)["Command"]
    cid = command["CommandId"]
    assert command["Status"] == command["StatusDetails"] == "Pending", command
    assert command["InstanceIds"] == [linux] and command["TargetCount"] == 1, command
    assert command["CompletedCount"] == 0 and command["ErrorCount"] == 0, command
    ok(f"SendCommand {cid}: Pending, targets only {linux} (moto targets every instance)")
    refused(ssm.get_command_invocation, "InvocationDoesNotExist", CommandId=cid, InstanceId=linux)
    assert ssm.list_command_invocations(CommandId=cid)["CommandInvocations"] == []
    assert counters().get("ssm:invocation-not-found", 0) == before + 1
    ok("right after SendCommand: InvocationDoesNotExist (counted), ListCommandInvocations []")
    time.sleep(settings["ssm_not_found"] + 0.2)
    invocation = ssm.get_command_invocation(CommandId=cid, InstanceId=linux)
    assert invocation["Status"] == invocation["StatusDetails"] == "Pending", invocation
    assert invocation["ResponseCode"] == -1 and invocation["StandardOutputContent"] == "", invocation
    assert invocation["PluginName"] == "aws:runShellScript", invocation
    listed = ssm.list_command_invocations(CommandId=cid)["CommandInvocations"]
    assert [(i["InstanceId"], i["Status"]) for i in listed] == [(linux, "Pending")], listed
    ok("after the window: GetCommandInvocation Pending, ResponseCode -1; listed Pending")
    sent = deliver(linux)
    assert len(sent) == 1 and sent[0]["commandId"] == cid and sent[0]["instanceId"] == linux, sent
    assert sent[0]["parameters"] == {"commands": ["echo a", "echo b"]}, sent
    assert sent[0]["executionTimeout"] == 3600, sent
    assert sent[0]["documentName"] == SHELL and sent[0]["comment"] == "tender-check", sent
    assert deliver(linux) == [], "delivered twice"
    invocation = ssm.get_command_invocation(CommandId=cid, InstanceId=linux)
    assert invocation["Status"] == "InProgress" and invocation["ExecutionStartDateTime"], invocation
    assert ssm.list_commands(CommandId=cid)["Commands"][0]["Status"] == "InProgress"
    ok(f"deliver: {json.dumps(sent[0])}; now InProgress, delivered once")
    code, answer = report(cid, linux, status="Success", responseCode=0, stdout="x" * 30000, stderr="e" * 9000)
    assert code == 200 and answer["commandStatus"] == "Success", answer
    invocation = ssm.get_command_invocation(CommandId=cid, InstanceId=linux)
    assert invocation["Status"] == invocation["StatusDetails"] == "Success" and invocation["ResponseCode"] == 0
    assert len(invocation["StandardOutputContent"]) == 24000 and len(invocation["StandardErrorContent"]) == 8000
    assert invocation["ExecutionEndDateTime"], invocation
    assert invocation["ExecutionElapsedTime"].startswith("PT"), invocation
    listed = ssm.list_commands(CommandId=cid)["Commands"][0]
    assert (listed["Status"], listed["CompletedCount"], listed["ErrorCount"]) == ("Success", 1, 0), listed
    detailed = ssm.list_command_invocations(CommandId=cid, Details=True)["CommandInvocations"][0]
    plugin = detailed["CommandPlugins"][0]
    assert plugin["Name"] == "aws:runShellScript" and len(plugin["Output"]) == 2500, plugin["Name"]
    ok("result Success: stdout 24000 / stderr 8000 chars kept; command Success, CompletedCount 1, ErrorCount 0")
    code, answer = report(cid, linux, status="Failed")
    assert code == 409, (code, answer)
    ok(f"a second result is refused: {code} {answer['error']}")

    command = ssm.send_command(
        InstanceIds=[windows],
        DocumentName=POWERSHELL,
        Parameters={"commands": ["Write-Output hi"], "executionTimeout": ["600"]},
    )["Command"]
    wid = command["CommandId"]
    assert deliver(linux) == [], "delivered to another instance's agent"
    sent = deliver(windows)
    assert [s["commandId"] for s in sent] == [wid] and sent[0]["executionTimeout"] == 600, sent
    code, answer = report(wid, windows, status="Failed", responseCode=2, stdout="half", stderr="boom")
    assert answer["commandStatus"] == "Failed", answer
    time.sleep(settings["ssm_not_found"] + 0.2)
    invocation = ssm.get_command_invocation(CommandId=wid, InstanceId=windows)
    assert (invocation["Status"], invocation["ResponseCode"]) == ("Failed", 2), invocation
    assert invocation["PluginName"] == "aws:runPowerShellScript", invocation
    listed = ssm.list_commands(CommandId=wid)["Commands"][0]
    assert (listed["Status"], listed["CompletedCount"], listed["ErrorCount"]) == ("Failed", 1, 1), listed
    ok("PowerShell on Windows: aws:runPowerShellScript; result Failed (2) -> command Failed, ErrorCount 1")
    mine = ssm.list_command_invocations(InstanceId=windows)["CommandInvocations"]
    assert [i["CommandId"] for i in mine] == [wid], mine
    failed = ssm.list_command_invocations(Filters=[{"key": "Status", "value": "Failed"}])["CommandInvocations"]
    assert wid in [i["CommandId"] for i in failed] and cid not in [i["CommandId"] for i in failed], failed
    ok("ListCommandInvocations by InstanceId and by Status filter")


def check_delivery_timeout(ssm, settings, linux):
    command = ssm.send_command(**shell([linux], TimeoutSeconds=30))["Command"]
    cid = command["CommandId"]
    agent(linux, ping="ConnectionLost")
    assert deliver(linux) == [], "delivered to a ConnectionLost agent"
    wait = 30 * settings["ssm_delivery_timeout_scale"]
    print(f"   (waiting {wait:.1f} s for the delivery timeout)", flush=True)
    time.sleep(wait + 0.5)
    invocation = ssm.get_command_invocation(CommandId=cid, InstanceId=linux)
    assert (invocation["Status"], invocation["StatusDetails"]) == ("TimedOut", "Delivery Timed Out"), invocation
    listed = ssm.list_commands(CommandId=cid)["Commands"][0]
    assert (listed["Status"], listed["StatusDetails"]) == ("TimedOut", "Delivery Timed Out"), listed
    counts = (listed["CompletedCount"], listed["ErrorCount"], listed["DeliveryTimedOutCount"])
    assert counts == (1, 0, 1), listed
    agent(linux)
    assert cid not in [d["commandId"] for d in deliver(linux)], "a timed-out command was delivered"
    ok("not delivered in TimeoutSeconds: TimedOut / Delivery Timed Out, DeliveryTimedOutCount 1, not delivered")


def check_iam(linux, other):
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ssm:SendCommand", "Resource": f"arn:aws:ssm:*::document/{SHELL}"},
            {
                "Effect": "Allow",
                "Action": "ssm:SendCommand",
                "Resource": "arn:aws:ec2:*:*:instance/*",
                "Condition": {"StringEquals": {"ssm:resourceTag/tender-check": "yes"}},
            },
            {
                "Effect": "Allow",
                "Action": ["ssm:DescribeInstanceInformation", "ssm:GetCommandInvocation"],
                "Resource": "*",
            },
        ],
    }
    code, role = control("POST", "/realism/roles", {"name": "tender-check-ssm", "policy": json.dumps(policy)})
    assert code == 200, role
    creds = ADMIN.client("sts", endpoint_url=ENDPOINT).assume_role(
        RoleArn=role["roleArn"], RoleSessionName="check"
    )["Credentials"]
    ssm = boto3.client(
        "ssm",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        config=RAW,
    )
    assert ssm.describe_instance_information()["InstanceInformationList"]
    command = ssm.send_command(**shell([linux]))["Command"]
    ok(f"role with the tag condition: SendCommand to the tagged {linux} allowed ({command['CommandId']})")
    message = refused(ssm.send_command, "AccessDeniedException", **shell([other]))
    assert f"instance/{other}" in message, message
    ok(f"untagged instance refused: {message}")
    other_document = dict(shell([linux]), DocumentName=POWERSHELL)
    message = refused(ssm.send_command, "AccessDeniedException", **other_document)
    assert "document/AWS-RunPowerShellScript" in message, message
    ok(f"other document refused: {message}")
    message = refused(ssm.list_commands, "AccessDeniedException")
    ok(f"a read the role lacks (ListCommands, answered by moto) refused in JSON: {message}")


def main():
    assert ENDPOINT, "usage: check_ssm.py ENDPOINT (or AWS_ENDPOINT_URL)"
    settings = control("GET", "/realism/")[1]["settings"]
    ec2 = ADMIN.client("ec2", endpoint_url=ENDPOINT)
    ssm = ADMIN.client("ssm", endpoint_url=ENDPOINT, config=RAW)
    linux, lost, bare, other = instances(ec2, 4, {"tender-check": "yes"})
    windows = instances(ec2, 1, {"tender-check": "no"})[0]
    ec2.delete_tags(Resources=[other], Tags=[{"Key": "tender-check"}])
    agent(linux)
    agent(windows, "Windows")
    agent(lost, ping="ConnectionLost")
    ok(f"instances {linux} (Linux), {windows} (Windows), {lost} (ConnectionLost), {bare} (no agent)")
    check_describe(ssm, linux, windows, lost, bare)
    check_refusals(ssm, linux, windows, lost, bare)
    check_run(ssm, settings, linux, windows)
    agent(other)
    check_iam(linux, other)
    check_delivery_timeout(ssm, settings, linux)
    gone = {"account": ACCOUNT, "region": REGION, "instanceId": windows}
    code, answer = control("DELETE", "/realism/ssm/agents", gone)
    assert code == 200 and answer["removed"], answer
    nodes = ssm.describe_instance_information(MaxResults=50)["InstanceInformationList"]
    assert windows not in [n["InstanceId"] for n in nodes], nodes
    refused(ssm.send_command, "InvalidInstanceId", **dict(shell([windows]), DocumentName=POWERSHELL))
    ok("DELETE /realism/ssm/agents: the node is gone, SendCommand refused")
    ec2.terminate_instances(InstanceIds=[linux])
    nodes = ssm.describe_instance_information(MaxResults=50)["InstanceInformationList"]
    assert linux not in [n["InstanceId"] for n in nodes], nodes
    ok("a terminated instance is no managed node")
    print(f"counters: {json.dumps({k: v for k, v in counters().items() if 'ssm' in k})}")
    print("all SSM checks passed")


if __name__ == "__main__":
    main()
