//! Kubernetes without a cluster (none can be installed on these machines): a stateful fake of the
//! API server ([`Api`], real HTTP and watch streams for the real `kube` client) and a test node
//! ([`Node`]) that runs the pods it holds as real Docker containers and reports their status, and
//! the workload controllers it needs (Deployments, ReplicaSets).
//! What each simulates is in its module documentation and in docs/deployment-kubernetes.md.

mod api;
mod controllers;
mod node;

pub use api::{kubeconfig, request, selects, write_kubeconfig, Api, Event, Key, Served};
pub use node::{Node, NETWORK};
