//! WorkerConfiguration against the real kube-apiserver and the moto AWS
//! emulator: subnet choice and the default-VPC fallback, the managed
//! security group's exact rules, public IPs, private-network endpoint checks,
//! instance type offerings, tag variables and the concurrency limit.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_ec2::types::VpcEndpointType;
use common::{Network, REGION, TestEnv, condition};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use tender::api::{Phase, WorkerConfiguration};
use tender::aws::network::TcpRule;

const TIMEOUT: Duration = Duration::from_secs(90);

fn config_condition(cfg: &WorkerConfiguration, type_: &str) -> Option<(String, String, String)> {
    cfg.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_config<F>(env: &TestEnv, name: &str, check: F) -> WorkerConfiguration
where
    F: Fn(&WorkerConfiguration) -> bool,
{
    let api: Api<WorkerConfiguration> = env.cluster_api();
    let name = env.cluster_name(name);
    let start = std::time::Instant::now();
    loop {
        if let Ok(cfg) = api.get(&name).await
            && check(&cfg)
        {
            return cfg;
        }
        assert!(
            start.elapsed() <= TIMEOUT,
            "configuration {name} not as expected: {:?}",
            api.get(&name).await.ok().and_then(|c| c.status)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn without_subnets_or_groups_workers_use_the_default_vpc_and_a_managed_group() {
    let env = TestEnv::new("defaultvpc").await;
    let defaults = common::default_subnets(&env.ec2).await;
    let (zone_b_subnet, zone_b, vpc) = defaults[1].clone();
    let protected = env.protected_instance(&zone_b_subnet).await;
    env.create_configuration_spec(
        "auto",
        serde_json::json!({
            "region": REGION, "imageId": "ami-0fedcba9876543210",
            "fileLevelRecoveryCidrs": ["10.20.0.0/16"],
            "tags": {"purpose": "{{operation}} of {{resource}} for {{namespace}}/{{job}}"}
        }),
    )
    .await;
    let cfg = wait_config(&env, "auto", |c| {
        c.status.as_ref().is_some_and(|s| {
            s.managed_security_group_id.is_some() && s.phase.as_deref() == Some("Ready")
        })
    })
    .await;
    let status = cfg.status.clone().unwrap();
    assert_eq!(status.vpc_id.as_deref(), Some(vpc.as_str()));
    assert_eq!(status.subnets.len(), defaults.len(), "every default subnet");
    let group = status.managed_security_group_id.clone().unwrap();
    assert_eq!(config_condition(&cfg, "NetworkReady").unwrap().0, "True");
    assert_eq!(
        config_condition(&cfg, "InstanceTypesOffered").unwrap().0,
        "True"
    );

    // Exactly the rules workers need, nothing else (not even EC2's default
    // allow-all egress).
    let aws = tender::aws::AwsClients::from_env().await;
    let rule = |port: i32, cidr: &str| TcpRule {
        port,
        cidr: cidr.into(),
    };
    let (ingress, egress) = aws
        .network()
        .security_group_rules(REGION, &group)
        .await
        .unwrap();
    assert_eq!(ingress, [rule(443, "10.20.0.0/16")]);
    assert_eq!(egress, [rule(443, "0.0.0.0/0")]);
    let described = env
        .ec2
        .describe_security_groups()
        .group_ids(&group)
        .send()
        .await
        .unwrap();
    let sg = &described.security_groups()[0];
    assert_eq!(sg.ip_permissions_egress().len(), 1, "{sg:?}");
    assert_eq!(sg.vpc_id(), Some(vpc.as_str()));

    // The worker goes to the default subnet of the resource's zone. (The
    // test world serves the blocks of the snapshots EC2 takes of an
    // instance, plain moto does not; what matters here is where its worker
    // went and that it could reach AWS.)
    env.create_job(
        "nightly",
        &protected,
        serde_json::json!({"backoffLimit": 0}),
    )
    .await;
    let job = env.wait_job_finished("nightly", TIMEOUT).await;
    if job.status.as_ref().unwrap().phase == Phase::Failed {
        // A failed backup leaves none of the snapshots it took.
        assert!(
            common::disks::snapshots_tagged(&env.ec2, "tender.dev/job-uid", &job.uid().unwrap())
                .await
                .is_empty()
        );
    }
    let worker = &job.status.as_ref().unwrap().workers[0];
    assert_eq!(worker.subnet_id.as_deref(), Some(zone_b_subnet.as_str()));
    assert!(
        worker.placement.as_deref().unwrap().contains(&zone_b),
        "{worker:?}"
    );
    let instance = &env.workers_of(&job.uid().unwrap()).await[0];
    assert_eq!(instance.subnet_id(), Some(zone_b_subnet.as_str()));
    // A default subnet gives its workers a public IP, as EC2 does: the
    // default VPC's only way out is its internet gateway.
    assert!(
        status.public_ip_subnets.contains(&zone_b_subnet),
        "{status:?}"
    );
    let (_, reason, message) = config_condition(&cfg, "NetworkReady").unwrap();
    assert_eq!(reason, "RoutesToAws");
    assert!(message.contains("internet gateway igw-"), "{message}");
    assert!(
        instance.network_interfaces()[0]
            .groups()
            .iter()
            .any(|g| g.group_id() == Some(group.as_str()))
    );
    let tags = TestEnv::tags(instance);
    assert_eq!(
        tags["purpose"],
        format!("backup of {protected} for {}/nightly", env.namespace)
    );

    // Changing the CIDRs changes the rules in place.
    let api: Api<WorkerConfiguration> = env.cluster_api();
    let auto = env.cluster_name("auto");
    api.patch(
        &auto,
        &Default::default(),
        &kube::api::Patch::Merge(
            serde_json::json!({"spec": {"fileLevelRecoveryCidrs": ["192.168.7.0/24"]}}),
        ),
    )
    .await
    .unwrap();
    common::eventually(TIMEOUT, || {
        let aws = aws.clone();
        let group = group.clone();
        async move {
            let (ingress, _) = aws
                .network()
                .security_group_rules(REGION, &group)
                .await
                .ok()?;
            (ingress
                == [TcpRule {
                    port: 443,
                    cidr: "192.168.7.0/24".into(),
                }])
            .then_some(())
        }
    })
    .await;

    // Deleting the configuration deletes the group it managed.
    api.delete(&auto, &DeleteParams::default()).await.unwrap();
    common::eventually(TIMEOUT, || {
        let ec2 = env.ec2.clone();
        let group = group.clone();
        async move {
            ec2.describe_security_groups()
                .group_ids(group)
                .send()
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn public_ips_only_when_asked_for() {
    let env = TestEnv::new("publicip").await;
    let net = env.network().await;
    env.boot_workers.store(false, Ordering::SeqCst);
    let protected = env.protected_disk().await;
    env.create_configuration("public", &net, serde_json::json!({"assignPublicIp": true}))
        .await;
    env.wait_configuration_ready("public").await;
    let job = env
        .create_job(
            "exposed",
            &protected,
            serde_json::json!({"workerConfigurationRef": {"name": "public"}}),
        )
        .await;
    let uid = job.uid().unwrap();
    let instance = common::eventually(TIMEOUT, || {
        let env = &env;
        let uid = uid.clone();
        async move { env.workers_of(&uid).await.into_iter().next() }
    })
    .await;
    assert!(
        instance.public_ip_address().is_some(),
        "assignPublicIp gives a public IP"
    );

    // Unset, a worker gets one as its subnet does by default (a default
    // subnet: yes).
    env.create_configuration("subnet-default", &net, serde_json::json!({}))
        .await;
    env.wait_configuration_ready("subnet-default").await;
    let protected = env.protected_disk().await;
    let job = env
        .create_job(
            "ip-default",
            &protected,
            serde_json::json!({"workerConfigurationRef": {"name": "subnet-default"}}),
        )
        .await;
    let uid = job.uid().unwrap();
    let instance = common::eventually(TIMEOUT, || {
        let env = &env;
        let uid = uid.clone();
        async move { env.workers_of(&uid).await.into_iter().next() }
    })
    .await;
    assert!(instance.public_ip_address().is_some(), "{instance:?}");

    // Set to false in a subnet whose only way out is an internet gateway:
    // no worker could reach AWS, so none is launched, and the job says why.
    env.create_configuration("none", &net, serde_json::json!({"assignPublicIp": false}))
        .await;
    let protected = env.protected_disk().await;
    let job = env
        .create_job(
            "ip-none",
            &protected,
            serde_json::json!({"workerConfigurationRef": {"name": "none"}}),
        )
        .await;
    let waiting = env
        .wait_job("ip-none", TIMEOUT, |j| {
            condition(j, "Ready").is_some_and(|c| c.reason == "WaitingForWorkerConfiguration")
        })
        .await;
    let message = condition(&waiting, "Ready").unwrap().message.clone();
    assert!(
        message.contains("no public IP") && message.contains(&net.subnet),
        "{message}"
    );
    assert!(env.workers_of(&job.uid().unwrap()).await.is_empty());
}

#[tokio::test]
async fn private_network_mode_reports_each_missing_endpoint_and_jobs_wait_for_it() {
    let env = TestEnv::new("private").await;
    // A VPC of this test's own, so its endpoints are its own.
    let vpc = env
        .ec2
        .create_vpc()
        .cidr_block("10.77.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let zone = format!("{REGION}a");
    let subnet = env
        .ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.77.1.0/24")
        .availability_zone(&zone)
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let sg = env
        .ec2
        .create_security_group()
        .group_name(common::unique("private"))
        .description("private workers")
        .vpc_id(&vpc_id)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_string();
    let endpoint = |service: &str, kind: VpcEndpointType, dns: bool| {
        let ec2 = env.ec2.clone();
        let vpc_id = vpc_id.clone();
        let subnet_id = subnet_id.clone();
        let service = format!("com.amazonaws.{REGION}.{service}");
        async move {
            let mut req = ec2
                .create_vpc_endpoint()
                .vpc_id(vpc_id)
                .service_name(service)
                .vpc_endpoint_type(kind.clone());
            if kind == VpcEndpointType::Interface {
                req = req.subnet_ids(subnet_id).private_dns_enabled(dns);
            }
            req.send().await.unwrap();
        }
    };
    for service in ["sqs", "kms"] {
        endpoint(service, VpcEndpointType::Interface, true).await;
    }
    // A gateway endpoint for S3 is not enough in this mode, and an ebs
    // endpoint without private DNS does not count.
    endpoint("s3", VpcEndpointType::Gateway, false).await;
    endpoint("ebs", VpcEndpointType::Interface, false).await;

    let net = Network {
        subnet: subnet_id.clone(),
        zone: zone.clone(),
        security_group: sg,
    };
    env.create_configuration("private", &net, serde_json::json!({"privateNetwork": true}))
        .await;
    let cfg = wait_config(&env, "private", |c| {
        config_condition(c, "NetworkReady").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = config_condition(&cfg, "NetworkReady").unwrap();
    assert_eq!(reason, "EndpointsMissing");
    assert!(
        message.contains(&format!(
            "backup: com.amazonaws.{REGION}.ec2, com.amazonaws.{REGION}.ebs, com.amazonaws.{REGION}.s3, com.amazonaws.{REGION}.sts"
        )),
        "{message}"
    );
    let missing = &cfg.status.as_ref().unwrap().missing_endpoints;
    // What each profile's workers call (src/aws/operation.rs): restore
    // needs ebs too; none needs ssm or ec2messages.
    assert_eq!(missing["backup"], ["ec2", "ebs", "s3", "sts"]);
    assert_eq!(missing["restore"], ["ebs", "s3"]);
    assert_eq!(missing["fileLevel"], ["s3"]);

    let protected = env.protected_disk().await;
    let job = env
        .create_job("waits", &protected, serde_json::json!({}))
        .await;
    let waiting = env
        .wait_job("waits", TIMEOUT, |j| {
            condition(j, "Reconciling").is_some_and(|c| c.reason == "WaitingForWorkerConfiguration")
        })
        .await;
    assert!(
        condition(&waiting, "Reconciling")
            .unwrap()
            .message
            .contains("ebs"),
        "{:?}",
        waiting.status
    );
    assert!(
        env.workers_of(&job.uid().unwrap()).await.is_empty(),
        "no worker that could not work"
    );

    // Adding what is missing lets the job run: an S3 gateway endpoint on
    // the subnet's route table counts.
    endpoint("ebs", VpcEndpointType::Interface, true).await;
    endpoint("ec2", VpcEndpointType::Interface, true).await;
    endpoint("sts", VpcEndpointType::Interface, true).await;
    let main_table = env
        .ec2
        .describe_route_tables()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&vpc_id)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .route_tables()[0]
        .route_table_id()
        .unwrap()
        .to_string();
    env.ec2
        .create_vpc_endpoint()
        .vpc_id(&vpc_id)
        .service_name(format!("com.amazonaws.{REGION}.s3"))
        .vpc_endpoint_type(VpcEndpointType::Gateway)
        .route_table_ids(main_table)
        .send()
        .await
        .unwrap();
    let cfg = wait_config(&env, "private", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.missing_endpoints.is_empty())
            && config_condition(c, "NetworkReady").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert!(cfg.status.as_ref().unwrap().missing_endpoints.is_empty());
    let job = env.wait_job_phase("waits", TIMEOUT, Phase::Succeeded).await;
    let instance = &env.workers_of(&job.uid().unwrap()).await[0];
    assert_eq!(
        instance.public_ip_address(),
        None,
        "no public IP in private-network mode"
    );
}

#[tokio::test]
async fn an_instance_type_the_region_does_not_offer_is_reported_not_launched() {
    let env = TestEnv::new("types").await;
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration(
        "odd",
        &net,
        serde_json::json!({"instanceTypes": {"backup": "zz9.large"}}),
    )
    .await;
    let cfg = wait_config(&env, "odd", |c| {
        config_condition(c, "InstanceTypesOffered").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = config_condition(&cfg, "Ready").unwrap();
    assert_eq!(reason, "InstanceTypeNotOffered");
    assert!(
        message.contains("zz9.large") && message.contains(REGION),
        "{message}"
    );
    let job = env
        .create_job("blocked", &protected, serde_json::json!({}))
        .await;
    let waiting = env
        .wait_job("blocked", TIMEOUT, |j| {
            condition(j, "Reconciling").is_some_and(|c| c.reason == "WaitingForWorkerConfiguration")
        })
        .await;
    assert!(
        condition(&waiting, "Reconciling")
            .unwrap()
            .message
            .contains("zz9.large")
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(env.workers_of(&job.uid().unwrap()).await.is_empty());
    let reasons: Vec<String> = env.events().await.into_iter().map(|(r, _)| r).collect();
    assert!(
        reasons.iter().any(|r| r == "InstanceTypeNotOffered"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn max_concurrent_workers_queues_jobs_in_creation_order() {
    let env = TestEnv::new("queue").await;
    env.boot_workers.store(false, Ordering::SeqCst);
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration(
        "one-at-a-time",
        &net,
        serde_json::json!({"maxConcurrentWorkers": 1}),
    )
    .await;
    env.wait_configuration_ready("one-at-a-time").await;
    let first = env
        .create_job("first", &protected, serde_json::json!({}))
        .await;
    env.wait_job("first", TIMEOUT, |j| {
        j.status.as_ref().is_some_and(|s| s.active_workers == 1)
    })
    .await;
    let second = env
        .create_job("second", &protected, serde_json::json!({}))
        .await;
    let third = env
        .create_job("third", &protected, serde_json::json!({}))
        .await;

    let second_status = env
        .wait_job("second", TIMEOUT, |j| {
            j.status
                .as_ref()
                .is_some_and(|s| s.queue_position == Some(1))
        })
        .await;
    let queued = condition(&second_status, "Reconciling").unwrap();
    assert_eq!(queued.reason, "Queued");
    assert!(queued.message.contains("position 1"), "{}", queued.message);
    env.wait_job("third", TIMEOUT, |j| {
        j.status
            .as_ref()
            .is_some_and(|s| s.queue_position == Some(2))
    })
    .await;
    let live = |uid: String| {
        let env = &env;
        async move {
            env.workers_of(&uid)
                .await
                .into_iter()
                .filter(|i| {
                    let state = i.state().unwrap().name().unwrap().as_str().to_string();
                    state == "pending" || state == "running"
                })
                .count()
        }
    };
    assert_eq!(live(first.uid().unwrap()).await, 1);
    assert_eq!(
        live(second.uid().unwrap()).await + live(third.uid().unwrap()).await,
        0,
        "the limit holds"
    );

    // Workers now boot and finish; the queue drains in order, one at a time.
    env.boot_workers.store(true, Ordering::SeqCst);
    for name in ["first", "second", "third"] {
        let job = env.wait_job_phase(name, TIMEOUT, Phase::Succeeded).await;
        assert_eq!(job.status.unwrap().queue_position, None);
    }
    let start = |name: &str| {
        let jobs: Api<tender::api::BackupJob> = env.api();
        let name = name.to_string();
        async move {
            jobs.get(&name).await.unwrap().status.unwrap().workers[0]
                .launch_time
                .clone()
                .unwrap()
                .0
        }
    };
    let (a, b, c) = (
        start("first").await,
        start("second").await,
        start("third").await,
    );
    assert!(a <= b && b <= c, "launched in creation order: {a} {b} {c}");
}

#[tokio::test]
async fn a_configuration_deleted_while_its_job_runs_goes_once_the_job_finishes() {
    let env = TestEnv::new("cfgdelete").await;
    env.boot_workers.store(false, Ordering::SeqCst);
    let net = env.network().await;
    let protected = env.protected_disk().await;
    env.create_configuration("leaving", &net, serde_json::json!({}))
        .await;
    env.wait_configuration_ready("leaving").await;
    env.create_job("running", &protected, serde_json::json!({}))
        .await;
    env.wait_job("running", TIMEOUT, |j| {
        j.status.as_ref().is_some_and(|s| s.active_workers == 1)
    })
    .await;
    let api: Api<WorkerConfiguration> = env.cluster_api();
    let leaving = env.cluster_name("leaving");
    api.delete(&leaving, &DeleteParams::default())
        .await
        .unwrap();
    wait_config(&env, "leaving", |c| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Deleting")
    })
    .await;

    // The running worker is still followed to its end, then the
    // configuration goes.
    env.boot_workers.store(true, Ordering::SeqCst);
    let job = env
        .wait_job_phase("running", TIMEOUT, Phase::Succeeded)
        .await;
    assert_eq!(job.status.unwrap().active_workers, 0);
    common::eventually(TIMEOUT, || {
        let api = api.clone();
        let leaving = leaving.clone();
        async move { api.get_opt(&leaving).await.ok()?.is_none().then_some(()) }
    })
    .await;
}

/// What can be known before a launch is checked by the configuration: a
/// security group that does not exist, a region AWS does not have, a VPC
/// with no way out. Each is `Ready=False` with a reason that names it.
#[tokio::test]
async fn missing_groups_unknown_regions_and_closed_subnets_are_named() {
    let env = TestEnv::new("preflight").await;
    let net = env.network().await;
    let ghost = "sg-0123456789abcdef0";
    env.create_configuration(
        "ghost-group",
        &net,
        serde_json::json!({"securityGroupIds": [ghost]}),
    )
    .await;
    env.create_configuration_spec(
        "nowhere",
        serde_json::json!({"region": "xx-nowhere-1", "imageId": "ami-0fedcba9876543210"}),
    )
    .await;
    // A VPC of its own with no internet gateway, NAT or endpoint.
    let vpc = env
        .ec2
        .create_vpc()
        .cidr_block("10.78.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = env
        .ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.78.1.0/24")
        .availability_zone(format!("{REGION}a"))
        .send()
        .await
        .unwrap();
    let closed = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    env.create_configuration_spec(
        "closed",
        serde_json::json!({"region": REGION, "imageId": "ami-0fedcba9876543210",
            "subnets": [{"subnetId": closed}], "assignPublicIp": true}),
    )
    .await;

    let not_ready = |c: &WorkerConfiguration| {
        config_condition(c, "Ready").is_some_and(|r| r.0 == "False" && r.1 != "NotReconciled")
    };
    let cfg = wait_config(&env, "ghost-group", not_ready).await;
    let (_, reason, message) = config_condition(&cfg, "Ready").unwrap();
    assert_eq!(reason, "SecurityGroupNotFound");
    assert!(message.contains(ghost), "{message}");

    let cfg = wait_config(&env, "nowhere", not_ready).await;
    let (_, reason, message) = config_condition(&cfg, "Ready").unwrap();
    assert_eq!(reason, "RegionNotFound", "{message}");
    assert!(message.contains("xx-nowhere-1"), "{message}");

    let cfg = wait_config(&env, "closed", |c| {
        config_condition(c, "NetworkReady").is_some_and(|r| r.0 == "False")
    })
    .await;
    let (_, reason, message) = config_condition(&cfg, "NetworkReady").unwrap();
    assert_eq!(reason, "NoRouteToAws", "{message}");
    assert!(
        message.contains(&closed) && message.contains("no default route"),
        "{message}"
    );
    assert_eq!(config_condition(&cfg, "Ready").unwrap().1, "NoRouteToAws");
}

/// A worker lost before its first message never reached AWS: the
/// configuration's `NetworkReady` says so, naming the worker and its
/// subnet, until a worker of it is heard from again.
#[tokio::test]
async fn a_worker_lost_before_its_first_message_marks_the_network_not_ready() {
    let env = TestEnv::new("unreached").await;
    let net = env.network().await;
    env.boot_workers.store(false, Ordering::SeqCst);
    env.create_configuration(
        "silent",
        &net,
        serde_json::json!({"heartbeatTimeoutSeconds": 5, "bootTimeoutSeconds": 10}),
    )
    .await;
    env.wait_configuration_ready("silent").await;
    let protected = env.protected_disk().await;
    env.create_job("lost", &protected, serde_json::json!({"backoffLimit": 0}))
        .await;
    let job = env.wait_job_phase("lost", TIMEOUT, Phase::Failed).await;
    let worker = &job.status.as_ref().unwrap().workers[0];
    assert_eq!(
        worker.reason.as_deref(),
        Some("WorkerBootTimeout"),
        "{worker:?}"
    );
    let instance = worker.instance_id.clone().unwrap();
    let cfg = wait_config(&env, "silent", |c| {
        config_condition(c, "NetworkReady").is_some_and(|c| c.0 == "False")
    })
    .await;
    let (_, reason, message) = config_condition(&cfg, "NetworkReady").unwrap();
    assert_eq!(reason, "WorkersUnreachable");
    assert!(
        message.contains(&instance) && message.contains(&net.subnet) && message.contains("SQS"),
        "{message}"
    );

    // A worker that reports clears it.
    env.boot_workers.store(true, Ordering::SeqCst);
    let protected = env.protected_disk().await;
    env.create_job("heard", &protected, serde_json::json!({}))
        .await;
    env.wait_job_phase("heard", TIMEOUT, Phase::Succeeded).await;
    let cfg = wait_config(&env, "silent", |c| {
        config_condition(c, "NetworkReady").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(
        config_condition(&cfg, "NetworkReady").unwrap().1,
        "RoutesToAws"
    );
}
