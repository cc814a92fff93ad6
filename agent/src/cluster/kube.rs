//! The `kube` source: the cluster state from the Kubernetes API, through kube-rs reflectors.
//!
//! Takes: a [`kube::Client`] (in-cluster configuration or `KUBECONFIG`: [`client`]). Gives: a
//! `watch` channel of [`ClusterState`] versions, like the manifests source. One list+watch
//! reflector per kind, each over every namespace, with the watcher's default backoff:
//! - the core kinds (v1 Namespace, Pod, Service, Node, ServiceAccount; networking.k8s.io/v1
//!   NetworkPolicy) as typed objects, each trimmed on arrival to the fields the model reads
//!   ([`Convert::trim`]: managed fields, `last-applied-configuration`, container details and
//!   conditions are dropped before caching; a NetworkPolicy is kept whole but for managed fields
//!   and the last-applied copy, for the audit log) and converted by [`super::convert`];
//! - the Calico and admin policy kinds ([`manifests::API_KINDS`]) as `DynamicObject`s, each kind
//!   at the API version discovery finds at start: `projectcalico.org/v3` when the Calico API
//!   server serves it, else `crd.projectcalico.org/v1`; `policy.networking.k8s.io/v1alpha1`. A
//!   kind the server does not serve (no Calico, no admin policy CRDs) is not read; that is not an
//!   error. Kinds that appear later are not discovered (restart the agent). Managed fields, the
//!   `last-applied-configuration` annotation and `status` are dropped on arrival; the objects are
//!   built into the model by the manifests source's own rules ([`manifests::build_partial`]), so
//!   the same objects give the same state from either source.
//!
//! Whenever a cache changes, a task waits a short debounce (200 ms), converts every cache and
//! publishes the result as the next version, unless it equals the current one. The state's
//! [`super::Objects`] (for the audit log) are the cached Namespaces, Pods, NetworkPolicies and
//! dynamic objects as JSON, each serialised again only when its resourceVersion changed; they
//! take part in the comparison as the audit sees them (a pod's status update publishes nothing). The first state is
//! published once discovery has answered and every cache has been filled (a clear error after a
//! timeout otherwise).
//!
//! While the API server is unreachable the caches and the last published state stay: flows keep
//! being attributed from it. The watchers reconnect with backoff (0.8 s doubling to 30 s) and
//! resume the watch, or relist when the server asks; the reflector swaps a relisted cache in whole
//! (no half-filled state is ever published).
//!
//! Must never: panic on an object it cannot convert (it is logged with kind, namespace/name, field
//! and reason, once per object version, and left out while the rest is built), publish an empty
//! state before the caches are filled, or block the flow path.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Debug,
    hash::Hash,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1 as core, networking::v1 as networking};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    api::{ApiResource, DynamicObject, TypeMeta},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{
    ClusterState,
    convert::{self, Convert},
    manifests,
};

/// The `kube` source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Neither an in-cluster configuration nor a usable kubeconfig.
    #[error("no Kubernetes API configuration (in-cluster service account or KUBECONFIG): {0}")]
    Config(#[source] kube::Error),
    /// Discovery did not answer or some caches were not filled within the timeout (the API
    /// server is unreachable, or the credentials may not list and watch these kinds).
    #[error("the cluster state was not complete after {}: not listed yet: {}", humantime::format_duration(*.timeout), .pending.join("; "))]
    NotReady {
        /// The timeout.
        timeout: Duration,
        /// Each kind still missing (or the discovery), with the last error its watcher saw.
        pending: Vec<String>,
    },
    /// A watcher task ended before its cache was filled.
    #[error("the {kind} watcher stopped before its cache was filled")]
    WatcherStopped {
        /// The kind.
        kind: String,
    },
}

/// Tuning of the `kube` source.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long [`watch_with`] waits for discovery and for every cache to be filled.
    pub ready_timeout: Duration,
    /// How long to wait after a change before building a new state (changes in that window are
    /// built together).
    pub debounce: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { ready_timeout: Duration::from_secs(60), debounce: Duration::from_millis(200) }
    }
}

/// A client from the in-cluster configuration or `KUBECONFIG` (`~/.kube/config`).
pub async fn client() -> Result<Client, KubeError> {
    Client::try_default().await.map_err(KubeError::Config)
}

/// Starts the reflectors and returns the state channel once every cache is filled, with the
/// default [`Options`] (60 s to fill, 200 ms debounce).
pub async fn watch(client: Client) -> Result<tokio::sync::watch::Receiver<Arc<ClusterState>>, KubeError> {
    watch_with(client, Options::default()).await
}

/// [`watch`] with explicit [`Options`]. The reflectors and the publishing task stop when every
/// receiver is dropped (or when this future is dropped before it returns).
pub async fn watch_with(
    client: Client,
    options: Options,
) -> Result<tokio::sync::watch::Receiver<Arc<ClusterState>>, KubeError> {
    let deadline = Instant::now() + options.ready_timeout;
    let changed = Arc::new(Notify::new());
    let mut tasks = Tasks::default();
    let mut caches = Caches {
        namespaces: Cache::typed(&client, &changed, &mut tasks),
        pods: Cache::typed(&client, &changed, &mut tasks),
        services: Cache::typed(&client, &changed, &mut tasks),
        nodes: Cache::typed(&client, &changed, &mut tasks),
        service_accounts: Cache::typed(&client, &changed, &mut tasks),
        network_policies: Cache::typed(&client, &changed, &mut tasks),
        dynamic: Vec::new(),
        raw: Mutex::default(),
    };
    // The core kinds are listed while discovery runs.
    let discovered = discover_until(&client, deadline).await;
    if let Ok(resources) = &discovered {
        for resource in resources {
            caches.dynamic.push(Cache::dynamic(&client, resource, &changed, &mut tasks));
        }
    }
    let mut pending = caches.pending_at(deadline).await?;
    if let Err(last) = discovered {
        pending.push(format!("discovery of the Calico and admin policy kinds ({last})"));
    }
    if !pending.is_empty() {
        return Err(KubeError::NotReady { timeout: options.ready_timeout, pending });
    }
    let mut unconvertible = HashSet::new();
    let state = caches.build(&mut unconvertible);
    tracing::info!(message = "Cluster state listed from the API server.", version = state.version, counts = ?state.counts());
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(state));
    tokio::spawn(publish(tx, caches, changed, tasks, options.debounce, unconvertible));
    Ok(rx)
}

/// The Calico and admin policy kinds the API server serves, each at the first of its API versions
/// that is served ([`manifests::API_KINDS`]). A kind served at none is left out.
async fn discover(client: &Client) -> Result<Vec<ApiResource>, kube::Error> {
    let groups = client.list_api_groups().await?;
    let served: HashSet<&str> =
        groups.groups.iter().flat_map(|g| g.versions.iter().map(|v| v.group_version.as_str())).collect();
    let mut wanted: Vec<&str> =
        manifests::API_KINDS.iter().flat_map(|(_, versions)| versions.iter().copied()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    // apiVersion → kind → plural, of what can be listed and watched.
    let mut kinds: HashMap<&str, HashMap<String, String>> = HashMap::new();
    for api_version in wanted.into_iter().filter(|v| served.contains(v)) {
        // A version with a fallback (`projectcalico.org/v3`, served by Calico's API server, an
        // aggregated API) that is registered but unavailable: its kinds are read at the next
        // version (Calico's CRDs, the same objects). The client retries a 503 for minutes, so
        // such a version gets a bounded wait. Any other failure fails this discovery (retried).
        let fallback = manifests::API_KINDS.iter().any(|(_, versions)| {
            versions.iter().position(|v| v == &api_version).is_some_and(|i| i + 1 < versions.len())
        });
        let list = if fallback {
            let answer =
                match tokio::time::timeout(FALLBACK_TIMEOUT, client.list_api_group_resources(api_version)).await {
                    Ok(Ok(list)) => Ok(list),
                    Ok(Err(e)) if is_unavailable(&e) => Err(e.to_string()),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => Err(format!("no answer within {}", humantime::format_duration(FALLBACK_TIMEOUT))),
                };
            match answer {
                Ok(list) => list,
                Err(error) => {
                    tracing::warn!(
                        message = "An API group version is registered but not available; reading its kinds at the next version.",
                        api_version,
                        error
                    );
                    continue;
                }
            }
        } else {
            client.list_api_group_resources(api_version).await?
        };
        let resources = list
            .resources
            .into_iter()
            // Subresources (`x/status`) are not kinds of their own.
            .filter(|r| !r.name.contains('/') && ["list", "watch"].iter().all(|v| r.verbs.iter().any(|have| have == v)))
            .map(|r| (r.kind, r.name))
            .collect();
        kinds.insert(api_version, resources);
    }
    let mut out = Vec::new();
    for (kind, versions) in manifests::API_KINDS {
        let found = versions.iter().find_map(|v| kinds.get(v).and_then(|k| k.get(*kind)).map(|plural| (*v, plural)));
        if let Some((api_version, plural)) = found {
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            out.push(ApiResource {
                group: group.into(),
                version: version.into(),
                api_version: api_version.into(),
                kind: (*kind).into(),
                plural: plural.clone(),
            });
        }
    }
    Ok(out)
}

/// How long discovery waits for the kinds of an API version that has a fallback.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `e` says the server (or the aggregated API behind it) is unavailable: 503.
fn is_unavailable(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 503)
}

/// [`discover`], retried with backoff (0.5 s doubling to 8 s) until `deadline`; the last error if
/// it never answered.
async fn discover_until(client: &Client, deadline: Instant) -> Result<Vec<ApiResource>, String> {
    let mut delay = Duration::from_millis(500);
    loop {
        let error = match tokio::time::timeout_at(deadline, discover(client)).await {
            Ok(Ok(resources)) => {
                let names: Vec<String> = resources.iter().map(label).collect();
                tracing::info!(message = "Calico and admin policy kinds discovered.", kinds = ?names);
                return Ok(resources);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer yet".to_owned(),
        };
        if Instant::now() + delay >= deadline {
            return Err(error);
        }
        tracing::warn!(message = "API discovery failed; retrying.", error = %error);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(8));
    }
}

/// How logs and errors name a discovered kind: `Tier.crd.projectcalico.org/v1`.
fn label(resource: &ApiResource) -> String {
    format!("{}.{}", resource.kind, resource.api_version)
}

use super::LAST_APPLIED;

/// Drops from a dynamic object what no conversion reads (managed fields, the last-applied copy,
/// `status`) and sets its `apiVersion` and `kind` (list items need not carry them).
fn trim_dynamic(object: &mut DynamicObject, resource: &ApiResource) {
    object.types = Some(TypeMeta { api_version: resource.api_version.clone(), kind: resource.kind.clone() });
    object.metadata.managed_fields = None;
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    if let Some(data) = object.data.as_object_mut() {
        data.remove("status");
    }
}

/// The spawned reflector tasks, aborted when dropped.
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One kind's reflector cache and the last error of its watcher (`None` while healthy).
struct Cache<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    /// The kind as logs and errors name it.
    kind: String,
    store: Store<K>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl<K> Cache<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    /// Spawns the list+watch reflector over `api`; `trim` is applied to each object before it
    /// is cached, and `changed` is notified after every change to the cache.
    fn start(
        kind: String,
        api: Api<K>,
        dyntype: K::DynamicType,
        trim: impl FnMut(&mut K) + Send + 'static,
        changed: &Arc<Notify>,
        tasks: &mut Tasks,
    ) -> Self {
        let writer = reflector::store::Writer::new(dyntype);
        let store = writer.as_reader();
        let last_error = Arc::new(Mutex::new(None));
        let stream = watcher(api, watcher::Config::default()).default_backoff().modify(trim).reflect(writer);
        let (changed, error, label) = (changed.clone(), last_error.clone(), kind.clone());
        tasks.0.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                        if error.lock().expect("not poisoned").take().is_some() {
                            tracing::info!(message = "Cluster watch resumed.", kind = %label);
                        }
                        changed.notify_one();
                    }
                    // A relist fills a buffer that the reflector swaps in at InitDone.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        // The server no longer has our resourceVersion (e.g. it restarted): the
                        // watcher relists; the cache is swapped in whole when the list is done.
                        tracing::info!(message = "Cluster watch expired; relisting.", kind = %label, reason = %status.message);
                    }
                    Err(e) => {
                        // The backoff spaces retries (0.8 s doubling to 30 s): no flood.
                        tracing::warn!(
                            message = "Cluster watch failed; keeping the cached state and retrying.",
                            kind = %label,
                            error = %e
                        );
                        *error.lock().expect("not poisoned") = Some(e.to_string());
                    }
                }
            }
            tracing::error!(message = "Cluster watch ended.", kind = %label);
        }));
        Self { kind, store, last_error }
    }

    /// Waits for the first complete list until `deadline`; `Ok(Some(reason))` if it did not come.
    async fn ready(&self, deadline: Instant) -> Result<Option<String>, KubeError> {
        match tokio::time::timeout_at(deadline, self.store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(None),
            Ok(Err(_)) => Err(KubeError::WatcherStopped { kind: self.kind.clone() }),
            Err(_) => {
                let last = self.last_error.lock().expect("not poisoned").clone();
                Ok(Some(format!("{} ({})", self.kind, last.unwrap_or_else(|| "no answer yet".into()))))
            }
        }
    }
}

impl<K> Cache<K>
where
    K: Convert + Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    /// The reflector of a core kind over all namespaces, trimmed to what [`Convert`] reads.
    fn typed(client: &Client, changed: &Arc<Notify>, tasks: &mut Tasks) -> Self {
        Self::start(K::KIND.into(), Api::all(client.clone()), Default::default(), K::trim, changed, tasks)
    }

    /// Converts every cached object into `state`; an object that does not convert is left out
    /// and logged once per object version (`failing` collects them).
    fn convert_into(&self, state: &mut ClusterState, logged: &HashSet<FailKey>, failing: &mut HashSet<FailKey>) {
        for object in self.store.state() {
            match object.convert() {
                Ok(model) => K::add(model, state),
                Err(errors) => {
                    let key = (self.kind.clone(), object_name(&*object), object.resource_version().unwrap_or_default());
                    if !logged.contains(&key) {
                        for e in &errors {
                            warn_skipped(&key, &e.field, &e.reason);
                        }
                    }
                    failing.insert(key);
                }
            }
        }
    }
}

impl<K> Cache<K>
where
    K: Resource + Clone + serde::Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    /// Adds every cached object to `objects` as JSON, reusing `raw`'s value of an object whose
    /// resourceVersion has not changed; `seen` collects the memo keys in use.
    fn raw_into(&self, objects: &mut super::Objects, raw: &mut RawMemo, seen: &mut HashSet<(String, String)>) {
        for object in self.store.state() {
            let memo = (self.kind.clone(), object_name(&*object));
            let rv = object.resource_version().unwrap_or_default();
            let value = match raw.get(&memo) {
                Some((at, value)) if *at == rv && !rv.is_empty() => value.clone(),
                _ => {
                    let value = Arc::new(super::strip(serde_json::to_value(&*object).unwrap_or_default()));
                    raw.insert(memo.clone(), (rv, value.clone()));
                    value
                }
            };
            if let Some(key) = super::ObjectKey::of(&value) {
                objects.0.entry(key).or_insert(value);
            }
            seen.insert(memo);
        }
    }
}

impl Cache<DynamicObject> {
    /// The reflector of a discovered kind over all namespaces.
    fn dynamic(client: &Client, resource: &ApiResource, changed: &Arc<Notify>, tasks: &mut Tasks) -> Self {
        let api = Api::all_with(client.clone(), resource);
        let r = resource.clone();
        Self::start(
            label(resource),
            api,
            resource.clone(),
            move |o: &mut DynamicObject| trim_dynamic(o, &r),
            changed,
            tasks,
        )
    }
}

/// `namespace/name`, or `name` for a cluster-wide object.
fn object_name<K: Resource>(object: &K) -> String {
    match object.namespace() {
        Some(ns) => format!("{ns}/{}", object.name_any()),
        None => object.name_any(),
    }
}

fn warn_skipped(key: &FailKey, field: &str, reason: &str) {
    tracing::warn!(message = "Skipping a cluster object that does not convert.", kind = %key.0, object = %key.1, field, reason);
}

/// (kind, namespace/name, resourceVersion) of an object that did not convert.
type FailKey = (String, String, String);

struct Caches {
    namespaces: Cache<core::Namespace>,
    pods: Cache<core::Pod>,
    services: Cache<core::Service>,
    nodes: Cache<core::Node>,
    service_accounts: Cache<core::ServiceAccount>,
    network_policies: Cache<networking::NetworkPolicy>,
    /// The discovered Calico and admin policy kinds, in [`manifests::API_KINDS`] order.
    dynamic: Vec<Cache<DynamicObject>>,
    /// The audited core objects as JSON by (kind, namespace/name), with the resourceVersion they
    /// were serialised at: an unchanged object is not serialised again on the next build.
    raw: Mutex<RawMemo>,
}

/// (kind, namespace/name) → (resourceVersion, the object as JSON).
type RawMemo = HashMap<(String, String), (String, Arc<serde_json::Value>)>;

impl Caches {
    /// The kinds not listed by `deadline`, each with its watcher's last error.
    async fn pending_at(&self, deadline: Instant) -> Result<Vec<String>, KubeError> {
        // Each waits until the same deadline; a cache filled in time answers even after it.
        let mut pending = vec![
            self.namespaces.ready(deadline).await?,
            self.pods.ready(deadline).await?,
            self.services.ready(deadline).await?,
            self.nodes.ready(deadline).await?,
            self.service_accounts.ready(deadline).await?,
            self.network_policies.ready(deadline).await?,
        ];
        for cache in &self.dynamic {
            pending.push(cache.ready(deadline).await?);
        }
        Ok(pending.into_iter().flatten().collect())
    }

    /// A state (version 0) from the caches; `logged` holds the objects that failed to convert
    /// before and is replaced by the ones failing now.
    fn build(&self, logged: &mut HashSet<FailKey>) -> ClusterState {
        let mut failing = HashSet::new();
        let mut state = self.build_dynamic(logged, &mut failing);
        self.namespaces.convert_into(&mut state, logged, &mut failing);
        self.pods.convert_into(&mut state, logged, &mut failing);
        self.services.convert_into(&mut state, logged, &mut failing);
        self.nodes.convert_into(&mut state, logged, &mut failing);
        self.service_accounts.convert_into(&mut state, logged, &mut failing);
        self.network_policies.convert_into(&mut state, logged, &mut failing);
        convert::sort(&mut state);
        let objects = Arc::make_mut(&mut state.objects);
        let mut raw = self.raw.lock().expect("not poisoned");
        let mut seen = HashSet::new();
        self.namespaces.raw_into(objects, &mut raw, &mut seen);
        self.pods.raw_into(objects, &mut raw, &mut seen);
        self.network_policies.raw_into(objects, &mut raw, &mut seen);
        raw.retain(|k, _| seen.contains(k));
        *logged = failing;
        state
    }

    /// The state of the Calico and admin policy objects alone, built as the manifests source
    /// builds documents (`kube:<apiVersion>/<kind>/[<namespace>/]<name>` stands for the file);
    /// objects with problems are left out and logged once per object version.
    fn build_dynamic(&self, logged: &HashSet<FailKey>, failing: &mut HashSet<FailKey>) -> ClusterState {
        // Sorted by origin: the same objects are always read in the same order.
        let mut objects: BTreeMap<PathBuf, (serde_json::Value, FailKey)> = BTreeMap::new();
        for cache in &self.dynamic {
            for object in cache.store.state() {
                let types = object.types.clone().unwrap_or_default();
                let name = object_name(&*object);
                let origin = PathBuf::from(format!("kube:{}/{}/{name}", types.api_version, types.kind));
                // A DynamicObject always serialises to a JSON object; `Null` would be reported.
                let value = serde_json::to_value(&*object).unwrap_or_default();
                objects
                    .insert(origin, (value, (cache.kind.clone(), name, object.resource_version().unwrap_or_default())));
            }
        }
        let mut keys = HashMap::new();
        let documents: Vec<(PathBuf, serde_json::Value)> = objects
            .into_iter()
            .map(|(origin, (value, key))| {
                keys.insert(origin.clone(), key);
                (origin, value)
            })
            .collect();
        let built = manifests::build_partial(documents);
        for e in &built.errors {
            let Some(key) = keys.get(&e.file) else {
                continue;
            };
            if !logged.contains(key) {
                warn_skipped(key, &e.field, &e.reason);
            }
            failing.insert(key.clone());
        }
        built.state
    }
}

/// Publishes a new version after each (debounced) change, until every receiver is gone.
async fn publish(
    tx: tokio::sync::watch::Sender<Arc<ClusterState>>,
    caches: Caches,
    changed: Arc<Notify>,
    tasks: Tasks,
    debounce: Duration,
    mut logged: HashSet<FailKey>,
) {
    let _tasks = tasks;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = changed.notified() => {}
        }
        tokio::time::sleep(debounce).await;
        let current = tx.borrow().clone();
        let mut next = caches.build(&mut logged);
        next.version = current.version;
        if next == *current {
            // A relist after a reconnect, or a change to fields the model does not hold.
            continue;
        }
        next.version = current.version + 1;
        tracing::info!(message = "Cluster state updated.", version = next.version, counts = ?next.counts());
        if tx.send(Arc::new(next)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache filled directly through its writer (no server), as the reflector would fill it.
    fn filled<K>(kind: &str, dyntype: K::DynamicType, objects: &[&str], trim: impl Fn(&mut K)) -> Cache<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone,
    {
        let mut writer = reflector::store::Writer::new(dyntype);
        let store = writer.as_reader();
        writer.apply_watcher_event(&watcher::Event::Init);
        for text in objects {
            let mut object: K = serde_yaml_ng::from_str(text).unwrap();
            trim(&mut object);
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The writer may go: the store keeps what it holds.
        Cache { kind: kind.into(), store, last_error: Arc::default() }
    }

    fn cache<K>(objects: &[&str]) -> Cache<K>
    where
        K: Convert + Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Default,
    {
        filled(K::KIND, K::DynamicType::default(), objects, K::trim)
    }

    fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
        let (group, version) = api_version.split_once('/').unwrap();
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    /// A dynamic cache of `resource`; the objects carry no apiVersion or kind (as list items may
    /// not), the trim sets them.
    fn dynamic(resource: &ApiResource, objects: &[&str]) -> Cache<DynamicObject> {
        filled(&label(resource), resource.clone(), objects, |o: &mut DynamicObject| trim_dynamic(o, resource))
    }

    fn no_core() -> Caches {
        Caches {
            namespaces: cache(&[]),
            pods: cache(&[]),
            services: cache(&[]),
            nodes: cache(&[]),
            service_accounts: cache(&[]),
            network_policies: cache(&[]),
            dynamic: Vec::new(),
            raw: Mutex::default(),
        }
    }

    /// Nothing listens: no state is published, and the error names every kind with its cause.
    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_server_is_a_clear_error_after_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = Client::try_from(kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap())).unwrap();
        let options = Options { ready_timeout: Duration::from_millis(1500), ..Options::default() };
        let error = watch_with(client, options).await.unwrap_err();
        let KubeError::NotReady { pending, .. } = &error else { panic!("{error}") };
        let kinds: Vec<&str> = pending.iter().map(|p| p.split(' ').next().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "Pod",
                "Service",
                "Node",
                "ServiceAccount",
                "NetworkPolicy.networking.k8s.io/v1",
                "discovery"
            ]
        );
        assert!(pending[6].starts_with("discovery of the Calico and admin policy kinds ("), "{}", pending[6]);
        let text = error.to_string();
        assert!(
            text.starts_with("the cluster state was not complete after 1s 500ms: not listed yet: Namespace ("),
            "{text}"
        );
        assert!(text.contains("failed to perform initial object list"), "{text}");
    }

    #[test]
    fn an_object_that_does_not_convert_is_left_out_and_the_rest_is_built() {
        let caches = Caches {
            namespaces: cache(&["metadata: {name: shop}"]),
            pods: cache(&[
                "metadata: {name: good, namespace: shop, resourceVersion: '1'}\nstatus: {podIP: 10.0.0.1}",
                "metadata: {name: bad, namespace: shop, resourceVersion: '2'}\nstatus: {podIP: 10.0.0.300}",
            ]),
            services: cache(&[]),
            nodes: cache(&["metadata: {name: n2}", "metadata: {name: n1}"]),
            service_accounts: cache(&[]),
            network_policies: cache(&[]),
            dynamic: Vec::new(),
            raw: Mutex::default(),
        };
        let mut logged = HashSet::new();
        let state = caches.build(&mut logged);
        assert_eq!(state.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(state.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2"], "sorted");
        assert_eq!(logged, HashSet::from([("Pod".to_string(), "shop/bad".to_string(), "2".to_string())]));
        // Built again: the same state, and the failure is remembered (logged once).
        assert_eq!(caches.build(&mut logged), state);
        assert_eq!(logged.len(), 1);
    }

    /// The dynamic kinds are built by the manifests source's rules: the same documents give the
    /// same objects; one with a problem is left out (and remembered to be logged once), the rest
    /// is built, and the core kinds are merged in.
    #[test]
    fn dynamic_kinds_are_built_like_manifests_and_bad_objects_are_left_out() {
        let tiers = resource("crd.projectcalico.org/v1", "Tier", "tiers");
        let gnps = resource("crd.projectcalico.org/v1", "GlobalNetworkPolicy", "globalnetworkpolicies");
        let nps = resource("crd.projectcalico.org/v1", "NetworkPolicy", "networkpolicies");
        let anps = resource("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy", "adminnetworkpolicies");
        let tier = "metadata: {name: security, resourceVersion: '1'}\nspec: {order: 100}";
        let gnp = "metadata: {name: security.deny-db, resourceVersion: '2', managedFields: [{manager: kubectl}]}\n\
                   spec: {tier: security, order: 10, selector: app == 'db', types: [Ingress], ingress: [{action: Deny}]}";
        let bad_gnp = "metadata: {name: broken, resourceVersion: '3'}\nspec: {selector: app == , types: [Ingress]}";
        let np = "metadata: {name: allow-web, namespace: shop, resourceVersion: '4'}\n\
                  spec: {selector: app == 'web', ingress: [{action: Allow}]}";
        let orphan =
            "metadata: {name: orphan, namespace: shop, resourceVersion: '5'}\nspec: {tier: missing, selector: all()}";
        let anp = "metadata: {name: a, resourceVersion: '6'}\n\
                   spec: {priority: 5, subject: {namespaces: {}}, ingress: [{name: deny-all, action: Deny, from: [{namespaces: {}}]}]}";
        let mut caches = no_core();
        caches.namespaces = cache(&["metadata: {name: shop}"]);
        caches.dynamic = vec![
            dynamic(&tiers, &[tier]),
            dynamic(&gnps, &[gnp, bad_gnp]),
            dynamic(&nps, &[np, orphan]),
            dynamic(&anps, &[anp]),
        ];
        let mut logged = HashSet::new();
        let state = caches.build(&mut logged);

        let documents = [
            ("crd.projectcalico.org/v1", "Tier", tier),
            ("crd.projectcalico.org/v1", "GlobalNetworkPolicy", gnp),
            ("crd.projectcalico.org/v1", "NetworkPolicy", np),
            ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy", anp),
            ("v1", "Namespace", "metadata: {name: shop}"),
        ];
        let text: Vec<String> =
            documents.iter().map(|(a, k, d)| format!("apiVersion: {a}\nkind: {k}\n{d}\n")).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("all.yaml"), text.join("---\n")).unwrap();
        // The same model; the audit log's objects also hold the two that do not convert.
        let mut from_files = manifests::load_dir(dir.path()).unwrap().state;
        let objects = |s: &ClusterState| s.objects.0.keys().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(objects(&state), ["shop", "a", "broken", "security.deny-db", "allow-web", "orphan", "security"]);
        from_files.objects = state.objects.clone();
        assert_eq!(state, from_files);
        assert_eq!(state.calico_policies.len(), 2);
        assert_eq!(state.tiers.len(), 1);
        assert_eq!(state.admin_policies[0].priority, 5);

        let key = |kind: &str, name: &str, rv: &str| (kind.to_string(), name.to_string(), rv.to_string());
        assert_eq!(
            logged,
            HashSet::from([
                key("GlobalNetworkPolicy.crd.projectcalico.org/v1", "broken", "3"),
                key("NetworkPolicy.crd.projectcalico.org/v1", "shop/orphan", "5"),
            ])
        );
        assert_eq!(caches.build(&mut logged), state, "built again: the same state");
        assert_eq!(logged.len(), 2);

        // The tier goes: its policy is left out too (its spec.tier names no Tier), the rest stays.
        caches.dynamic[0] = dynamic(&tiers, &[]);
        let without_tier = caches.build(&mut logged);
        assert_eq!(without_tier.calico_policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["allow-web"]);
        assert!(logged.contains(&key("GlobalNetworkPolicy.crd.projectcalico.org/v1", "security.deny-db", "2")));
    }

    #[test]
    fn dynamic_objects_are_trimmed_and_typed() {
        let tiers = resource("projectcalico.org/v3", "Tier", "tiers");
        let cache = dynamic(
            &tiers,
            &[
                "metadata: {name: t, managedFields: [{manager: kubectl}], annotations: {kubectl.kubernetes.io/last-applied-configuration: '{}', keep: me}}\n\
               spec: {order: 1}\nstatus: {conditions: []}",
            ],
        );
        let object = cache.store.state().pop().unwrap();
        assert_eq!(object.types, Some(TypeMeta { api_version: "projectcalico.org/v3".into(), kind: "Tier".into() }));
        assert!(object.metadata.managed_fields.is_none());
        assert_eq!(object.metadata.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!(object.data, serde_json::json!({"spec": {"order": 1}}));
    }
}
