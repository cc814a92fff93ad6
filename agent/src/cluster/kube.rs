//! The `kube` source: the cluster state from the Kubernetes API, through kube-rs reflectors.
//!
//! Takes: a [`kube::Client`] (in-cluster configuration or `KUBECONFIG`: [`client`]). Gives: a
//! `watch` channel of [`ClusterState`] versions, like the manifests source. One list+watch
//! reflector per kind (v1 Namespace, Pod, Service, Node, ServiceAccount; networking.k8s.io/v1
//! NetworkPolicy), each over every namespace, with the watcher's default backoff, and each object
//! trimmed on arrival to the fields the model reads ([`Convert::trim`]: managed fields,
//! `last-applied-configuration`, container details and conditions are dropped before caching).
//! Whenever a cache changes, a task waits a short debounce (200 ms), converts every cache with the
//! same rules as the manifests source ([`super::convert`]) and publishes the result as the next
//! version, unless it equals the current one. The first state is published once every cache has
//! been filled (a clear error after a timeout otherwise).
//!
//! While the API server is unreachable the caches and the last published state stay: flows keep
//! being attributed from it. The watchers reconnect with backoff (0.8 s doubling to 30 s) and
//! resume the watch, or relist when the server asks; the reflector swaps a relisted cache in whole
//! (no half-filled state is ever published).
//!
//! Must never: panic on an object it cannot convert (it is logged with kind, namespace/name, field
//! and reason, once per object version, and left out), publish an empty state before the caches
//! are filled, or block the flow path.
//!
//! Later: Calico (`projectcalico.org/v3`) and AdminNetworkPolicy (`policy.networking.k8s.io`)
//! kinds come as `DynamicObject` watches of their CRDs (`Api::<DynamicObject>::all_with` and a
//! `reflector::store` keyed by `ApiResource`), converted through `convert` like the manifests
//! source's, and added as further caches here; the kinds are resolved by discovery so a cluster
//! without the CRDs simply has none.

use std::{
    collections::HashSet,
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1 as core, networking::v1 as networking};
use kube::{
    Api, Client, Resource, ResourceExt as _,
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
};

/// The `kube` source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// Neither an in-cluster configuration nor a usable kubeconfig.
    #[error("no Kubernetes API configuration (in-cluster service account or KUBECONFIG): {0}")]
    Config(#[source] kube::Error),
    /// Some caches were not filled within the timeout (the API server is unreachable, or the
    /// credentials may not list and watch these kinds).
    #[error("the cluster state was not complete after {}: not listed yet: {}", humantime::format_duration(*.timeout), .pending.join("; "))]
    NotReady {
        /// The timeout.
        timeout: Duration,
        /// Each kind still missing, with the last error its watcher saw.
        pending: Vec<String>,
    },
    /// A watcher task ended before its cache was filled.
    #[error("the {kind} watcher stopped before its cache was filled")]
    WatcherStopped {
        /// The kind.
        kind: &'static str,
    },
}

/// Tuning of the `kube` source.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long [`watch_with`] waits for every cache to be filled.
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
    let changed = Arc::new(Notify::new());
    let mut tasks = Tasks::default();
    let caches = Caches {
        namespaces: Cache::start(&client, &changed, &mut tasks),
        pods: Cache::start(&client, &changed, &mut tasks),
        services: Cache::start(&client, &changed, &mut tasks),
        nodes: Cache::start(&client, &changed, &mut tasks),
        service_accounts: Cache::start(&client, &changed, &mut tasks),
        network_policies: Cache::start(&client, &changed, &mut tasks),
    };
    caches.wait_until_ready(options.ready_timeout).await?;
    let mut unconvertible = HashSet::new();
    let state = caches.build(&mut unconvertible);
    tracing::info!(message = "Cluster state listed from the API server.", version = state.version, counts = ?state.counts());
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(state));
    tokio::spawn(publish(tx, caches, changed, tasks, options.debounce, unconvertible));
    Ok(rx)
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
    store: Store<K>,
    last_error: Arc<Mutex<Option<String>>>,
}

impl<K> Cache<K>
where
    K: Convert + Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    /// Spawns the list+watch reflector of `K` over all namespaces; `changed` is notified after
    /// every change to the cache.
    fn start(client: &Client, changed: &Arc<Notify>, tasks: &mut Tasks) -> Self {
        let (store, writer) = reflector::store::<K>();
        let last_error = Arc::new(Mutex::new(None));
        let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            // Only what the conversion reads is cached: managedFields and the rest go here.
            .modify(|object: &mut K| object.trim())
            .reflect(writer);
        let (changed, error) = (changed.clone(), last_error.clone());
        tasks.0.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                        if error.lock().expect("not poisoned").take().is_some() {
                            tracing::info!(message = "Cluster watch resumed.", kind = K::KIND);
                        }
                        changed.notify_one();
                    }
                    // A relist fills a buffer that the reflector swaps in at InitDone.
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                        // The server no longer has our resourceVersion (e.g. it restarted): the
                        // watcher relists; the cache is swapped in whole when the list is done.
                        tracing::info!(message = "Cluster watch expired; relisting.", kind = K::KIND, reason = %status.message);
                    }
                    Err(e) => {
                        // The backoff spaces retries (0.8 s doubling to 30 s): no flood.
                        tracing::warn!(
                            message = "Cluster watch failed; keeping the cached state and retrying.",
                            kind = K::KIND,
                            error = %e
                        );
                        *error.lock().expect("not poisoned") = Some(e.to_string());
                    }
                }
            }
            tracing::error!(message = "Cluster watch ended.", kind = K::KIND);
        }));
        Self { store, last_error }
    }

    /// Waits for the first complete list until `deadline`; `Ok(Some(reason))` if it did not come.
    async fn ready(&self, deadline: Instant) -> Result<Option<String>, KubeError> {
        match tokio::time::timeout_at(deadline, self.store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(None),
            Ok(Err(_)) => Err(KubeError::WatcherStopped { kind: K::KIND }),
            Err(_) => {
                let last = self.last_error.lock().expect("not poisoned").clone();
                Ok(Some(format!("{} ({})", K::KIND, last.unwrap_or_else(|| "no answer yet".into()))))
            }
        }
    }

    /// Converts every cached object into `state`; an object that does not convert is left out
    /// and logged once per object version (`failing` collects them).
    fn convert_into(&self, state: &mut ClusterState, logged: &HashSet<FailKey>, failing: &mut HashSet<FailKey>) {
        for object in self.store.state() {
            match object.convert() {
                Ok(model) => K::add(model, state),
                Err(errors) => {
                    let name = match object.namespace() {
                        Some(ns) => format!("{ns}/{}", object.name_any()),
                        None => object.name_any(),
                    };
                    let key = (K::KIND, name, object.resource_version().unwrap_or_default());
                    if !logged.contains(&key) {
                        for e in &errors {
                            tracing::warn!(
                                message = "Skipping a cluster object that does not convert.",
                                kind = K::KIND,
                                object = %key.1,
                                field = %e.field,
                                reason = %e.reason
                            );
                        }
                    }
                    failing.insert(key);
                }
            }
        }
    }
}

/// (kind, namespace/name, resourceVersion) of an object that did not convert.
type FailKey = (&'static str, String, String);

struct Caches {
    namespaces: Cache<core::Namespace>,
    pods: Cache<core::Pod>,
    services: Cache<core::Service>,
    nodes: Cache<core::Node>,
    service_accounts: Cache<core::ServiceAccount>,
    network_policies: Cache<networking::NetworkPolicy>,
}

impl Caches {
    async fn wait_until_ready(&self, timeout: Duration) -> Result<(), KubeError> {
        let deadline = Instant::now() + timeout;
        // Each waits until the same deadline; a cache filled in time answers even after it.
        let pending: Vec<String> = [
            self.namespaces.ready(deadline).await?,
            self.pods.ready(deadline).await?,
            self.services.ready(deadline).await?,
            self.nodes.ready(deadline).await?,
            self.service_accounts.ready(deadline).await?,
            self.network_policies.ready(deadline).await?,
        ]
        .into_iter()
        .flatten()
        .collect();
        if pending.is_empty() { Ok(()) } else { Err(KubeError::NotReady { timeout, pending }) }
    }

    /// A state (version 0) from the caches; `logged` holds the objects that failed to convert
    /// before and is replaced by the ones failing now.
    fn build(&self, logged: &mut HashSet<FailKey>) -> ClusterState {
        let mut state = ClusterState::default();
        let mut failing = HashSet::new();
        self.namespaces.convert_into(&mut state, logged, &mut failing);
        self.pods.convert_into(&mut state, logged, &mut failing);
        self.services.convert_into(&mut state, logged, &mut failing);
        self.nodes.convert_into(&mut state, logged, &mut failing);
        self.service_accounts.convert_into(&mut state, logged, &mut failing);
        self.network_policies.convert_into(&mut state, logged, &mut failing);
        convert::sort(&mut state);
        *logged = failing;
        state
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
    fn cache<K>(objects: &[&str]) -> Cache<K>
    where
        K: Convert + Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Default,
    {
        let (store, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for text in objects {
            let mut object: K = serde_yaml_ng::from_str(text).unwrap();
            object.trim();
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // The writer may go: the store keeps what it holds.
        Cache { store, last_error: Arc::default() }
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
        assert_eq!(kinds, ["Namespace", "Pod", "Service", "Node", "ServiceAccount", "NetworkPolicy.networking.k8s.io/v1"]);
        let text = error.to_string();
        assert!(text.starts_with("the cluster state was not complete after 1s 500ms: not listed yet: Namespace ("), "{text}");
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
        };
        let mut logged = HashSet::new();
        let state = caches.build(&mut logged);
        assert_eq!(state.pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(state.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1", "n2"], "sorted");
        assert_eq!(logged, HashSet::from([("Pod", "shop/bad".to_string(), "2".to_string())]));
        // Built again: the same state, and the failure is remembered (logged once).
        assert_eq!(caches.build(&mut logged), state);
        assert_eq!(logged.len(), 1);
    }
}
