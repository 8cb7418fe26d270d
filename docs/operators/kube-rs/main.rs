//! The MySQLCluster operator of examples/mysql-operator, written with kube-rs.
//!
//! The same resource, children and status: a root Secret `<name>-root` (generated once), a
//! headless Service `<name>`, pods `<name>-<i>` made one at a time once those before are Ready
//! (a StatefulSet's OrderedReady), each with its PVC `data-<name>-<i>`; scale-down from the
//! highest ordinal, outdated pods replaced from the highest down; status with the conditions
//! Ready and Progressing. A finalizer deletes the Secret before the cluster goes.
//!
//! `cargo run -- crd` prints the CRD; `cargo run` runs the controller.
use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    io::Read,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Client, CustomResource, CustomResourceExt, Resource, ResourceExt,
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::{Action, Controller},
        events::{Event as Note, EventType, Recorder, Reporter},
        finalizer::{Event, finalizer},
        watcher,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const MANAGER: &str = "mysql-operator";
const FINALIZER: &str = "database.example.com/cleanup";
const SPEC_HASH: &str = "database.example.com/spec-hash";

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "database.example.com",
    version = "v1",
    kind = "MySQLCluster",
    namespaced,
    status = "MySQLClusterStatus",
    shortname = "mysql",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MySQLClusterSpec {
    /// mysql image tag
    #[serde(default = "default_version")]
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+(\.[0-9]+)?$"))]
    pub version: String,
    #[serde(default = "one")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// e.g. 10Gi
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub storage_size: String,
    #[serde(default)]
    pub resources: Resources,
}

#[derive(Deserialize, Serialize, Clone, Debug, JsonSchema)]
pub struct Resources {
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?m?$"))]
    pub cpu: String,
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub memory: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: "500m".into(),
            memory: "1Gi".into(),
        }
    }
}

fn default_version() -> String {
    "8.0".into()
}

fn one() -> i32 {
    1
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MySQLClusterStatus {
    pub replicas: i32,
    pub ready_replicas: i32,
    pub selector: String,
    pub phase: String,
    pub last_update: Option<Time>,
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[from] Box<kube::runtime::finalizer::Error<Error>>),
}

struct Context {
    client: Client,
    recorder: Recorder,
}

// --- bodies -------------------------------------------------------------------------------

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "mysql".into()),
        ("app.kubernetes.io/instance".into(), name.into()),
    ])
}

/// `body` with a hash of itself in an annotation, and its controller reference.
fn stamped(mut body: Value, owner: &MySQLCluster) -> Value {
    let mut hasher = DefaultHasher::new();
    body.to_string().hash(&mut hasher);
    body["metadata"]["annotations"] = json!({ SPEC_HASH: format!("{:016x}", hasher.finish()) });
    body["metadata"]["ownerReferences"] = json!([owner.controller_owner_ref(&()).unwrap()]);
    body
}

fn hash_of<K: Resource>(obj: &K) -> Option<&String> {
    obj.meta().annotations.as_ref()?.get(SPEC_HASH)
}

fn service(cluster: &MySQLCluster) -> Value {
    let name = cluster.name_any();
    stamped(
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "labels": labels(&name)},
            "spec": {
                "clusterIP": "None", "selector": labels(&name), "publishNotReadyAddresses": true,
                "ports": [{"name": "mysql", "port": 3306, "targetPort": 3306}],
            },
        }),
        cluster,
    )
}

fn claim(cluster: &MySQLCluster, ordinal: i32) -> Value {
    let name = cluster.name_any();
    stamped(
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("data-{name}-{ordinal}"), "labels": labels(&name)},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": cluster.spec.storage_size}},
            },
        }),
        cluster,
    )
}

fn pod(cluster: &MySQLCluster, ordinal: i32) -> Value {
    let (name, spec) = (cluster.name_any(), &cluster.spec);
    let limits = json!({"cpu": spec.resources.cpu, "memory": spec.resources.memory});
    stamped(
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{name}-{ordinal}"), "labels": labels(&name)},
            "spec": {
                "hostname": format!("{name}-{ordinal}"), "subdomain": name,
                "containers": [{
                    "name": "mysql", "image": format!("mysql:{}", spec.version),
                    "env": [{"name": "MYSQL_ROOT_PASSWORD", "valueFrom":
                        {"secretKeyRef": {"name": format!("{name}-root"), "key": "password"}}}],
                    "ports": [{"name": "mysql", "containerPort": 3306}],
                    "resources": {"requests": limits, "limits": limits},
                    "readinessProbe": {
                        "exec": {"command": ["mysqladmin", "ping", "-h", "127.0.0.1"]},
                        "initialDelaySeconds": 5, "periodSeconds": 5,
                    },
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/mysql"}],
                }],
                "volumes": [{"name": "data",
                    "persistentVolumeClaim": {"claimName": format!("data-{name}-{ordinal}")}}],
            },
        }),
        cluster,
    )
}

// --- reading pods ---------------------------------------------------------------------------

fn ordinal(cluster: &MySQLCluster, pod: &Pod) -> Option<i32> {
    pod.name_any()
        .strip_prefix(&format!("{}-", cluster.name_any()))?
        .parse()
        .ok()
}

fn ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn failed(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed" | "Succeeded")
    )
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn outdated(cluster: &MySQLCluster, i: i32, pod: &Pod) -> bool {
    hash_of(pod).map(String::as_str)
        != self::pod(cluster, i)["metadata"]["annotations"][SPEC_HASH].as_str()
}

// --- the reconcile --------------------------------------------------------------------------

async fn reconcile(cluster: Arc<MySQLCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cluster.namespace().unwrap();
    let clusters: Api<MySQLCluster> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&clusters, FINALIZER, cluster, |event| async {
        match event {
            Event::Apply(cluster) => apply(&cluster, &ctx, &ns).await,
            Event::Cleanup(cluster) => cleanup(&cluster, &ctx, &ns).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(cluster: &MySQLCluster, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let name = cluster.name_any();
    let ssa = PatchParams::apply(MANAGER).force();
    ensure_root_secret(cluster, ctx, ns).await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let wanted = service(cluster);
    let current = services.get_opt(&name).await?;
    if current.as_ref().and_then(hash_of).map(String::as_str)
        != wanted["metadata"]["annotations"][SPEC_HASH].as_str()
    {
        services.patch(&name, &ssa, &Patch::Apply(&wanted)).await?;
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for i in 0..cluster.spec.replicas {
        let body = claim(cluster, i);
        if claims.get_opt(&format!("data-{name}-{i}")).await?.is_none() {
            claims
                .patch(&format!("data-{name}-{i}"), &ssa, &Patch::Apply(&body))
                .await?;
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("app.kubernetes.io/name=mysql,app.kubernetes.io/instance={name}");
    let owned: BTreeMap<i32, Pod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .into_iter()
        .filter_map(|p| Some((ordinal(cluster, &p)?, p)))
        .collect();
    step_pods(cluster, &pods, &owned).await?;
    let status = status_of(cluster, &owned);
    if cluster.status.as_ref() != Some(&status) {
        let clusters: Api<MySQLCluster> = Api::namespaced(ctx.client.clone(), ns);
        let patch = json!({"apiVersion": "database.example.com/v1", "kind": "MySQLCluster", "status": status});
        clusters
            .patch_status(&name, &ssa, &Patch::Apply(&patch))
            .await?;
    }
    Ok(Action::await_change())
}

async fn ensure_root_secret(cluster: &MySQLCluster, ctx: &Context, ns: &str) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = format!("{}-root", cluster.name_any());
    if secrets.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let mut random = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .unwrap();
    let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let body: Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels(&cluster.name_any()),
                     "ownerReferences": [cluster.controller_owner_ref(&()).unwrap()]},
        "type": "Opaque", "stringData": {"password": password},
    }))
    .unwrap();
    match secrets.create(&PostParams::default(), &body).await {
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()), // made by an earlier try
        result => result?,
    };
    note(
        ctx,
        cluster,
        "SecretCreated",
        format!("root password in Secret {name}"),
    )
    .await;
    Ok(())
}

/// One change at a time, as a StatefulSet's OrderedReady.
async fn step_pods(
    cluster: &MySQLCluster,
    pods: &Api<Pod>,
    owned: &BTreeMap<i32, Pod>,
) -> Result<(), Error> {
    if owned.values().any(terminating) {
        return Ok(());
    }
    let ssa = PatchParams::apply(MANAGER).force();
    for i in 0..cluster.spec.replicas {
        match owned.get(&i) {
            None => {
                pods.patch(
                    &format!("{}-{i}", cluster.name_any()),
                    &ssa,
                    &Patch::Apply(&pod(cluster, i)),
                )
                .await?;
                return Ok(());
            }
            Some(p) if failed(p) => {
                pods.delete(&p.name_any(), &DeleteParams::default()).await?;
                return Ok(());
            }
            Some(p) if !ready(p) => return Ok(()),
            Some(_) => {}
        }
    }
    let extra = owned.keys().filter(|&&i| i >= cluster.spec.replicas).max();
    let stale = owned
        .iter()
        .filter(|(i, p)| **i < cluster.spec.replicas && outdated(cluster, **i, p));
    if let Some(i) = extra.or(stale.map(|(i, _)| i).max()) {
        pods.delete(&owned[i].name_any(), &DeleteParams::default())
            .await?;
    }
    Ok(())
}

/// As apimachinery's meta.SetStatusCondition: the transition time moves with the status.
fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

fn status_of(cluster: &MySQLCluster, pods: &BTreeMap<i32, Pod>) -> MySQLClusterStatus {
    let (wanted, version) = (cluster.spec.replicas, &cluster.spec.version);
    let old = cluster.status.clone().unwrap_or_default();
    let generation = cluster.metadata.generation;
    let live: Vec<(i32, &Pod)> = pods
        .iter()
        .filter(|(_, p)| !terminating(p))
        .map(|(i, p)| (*i, p))
        .collect();
    let ready_count = live.iter().filter(|(_, p)| ready(p)).count() as i32;
    let serving = live.iter().filter(|(i, p)| *i < wanted && ready(p)).count() as i32;
    let extra = pods.keys().filter(|&&i| i >= wanted).count();
    let stale = live
        .iter()
        .filter(|(i, p)| *i < wanted && outdated(cluster, *i, p))
        .count();
    let (reason, message) = if extra > 0 {
        ("ScalingDown", format!("{extra} replicas to remove"))
    } else if serving < wanted {
        ("ScalingUp", format!("{serving} of {wanted} replicas ready"))
    } else if stale > 0 {
        (
            "Updating",
            format!("{stale} replicas to update to mysql:{version}"),
        )
    } else {
        (
            "Complete",
            format!("{wanted} replicas of mysql:{version} ready"),
        )
    };
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    let mut conditions = old.conditions.clone();
    let all = serving == wanted;
    let ready_reason = if all {
        "AllReplicasReady"
    } else {
        "ReplicasNotReady"
    };
    set_condition(
        &mut conditions,
        condition(
            "Ready",
            all,
            ready_reason,
            format!("{serving} of {wanted} replicas ready"),
        ),
    );
    set_condition(
        &mut conditions,
        condition("Progressing", reason != "Complete", reason, message),
    );
    let phase = match (reason, ready_count) {
        ("Complete", _) => "Ready",
        (_, 0) => "Pending",
        _ => "Scaling",
    };
    let selector = labels(&cluster.name_any())
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut status = MySQLClusterStatus {
        replicas: live.len() as i32,
        ready_replicas: ready_count,
        selector,
        phase: phase.into(),
        last_update: old.last_update.clone(),
        observed_generation: generation,
        conditions,
    };
    if status != old {
        status.last_update = Some(now);
    }
    status
}

async fn cleanup(cluster: &MySQLCluster, ctx: &Context, ns: &str) -> Result<Action, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = format!("{}-root", cluster.name_any());
    let done = match secrets.delete(&name, &DeleteParams::default()).await {
        Ok(_) => "deleted",
        Err(kube::Error::Api(e)) if e.code == 404 => "already gone",
        Err(e) => return Err(e.into()),
    };
    note(ctx, cluster, "Cleanup", format!("Secret {name} {done}")).await;
    Ok(Action::await_change())
}

async fn note(ctx: &Context, cluster: &MySQLCluster, reason: &str, message: String) {
    let event = Note {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(message),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!("event not recorded: {e}");
    }
}

fn error_policy(_cluster: Arc<MySQLCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!("reconcile failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("crd") {
        println!("{}", serde_json::to_string_pretty(&MySQLCluster::crd())?);
        return Ok(());
    }
    tracing_subscriber::fmt::init();
    let client = Client::try_default().await?;
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
    });
    let labelled = watcher::Config::default().labels("app.kubernetes.io/name=mysql");
    Controller::new(
        Api::<MySQLCluster>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), labelled.clone())
    .owns(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        labelled.clone(),
    )
    .owns(Api::<Service>::all(client.clone()), labelled)
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::warn!("{e}");
        }
    })
    .await;
    Ok(())
}
