//! The controllers of the fake cluster that the tests need, run by the test node's loop: the
//! Deployment controller (a ReplicaSet per pod template, the old ones scaled to zero: a rollout)
//! and the ReplicaSet controller (pods made or deleted to match `replicas`), with the garbage
//! collector's part (objects whose controller is gone are deleted). No rollout strategy: old pods
//! go as new ones are made.

use serde_json::{json, Value};
use sha2::Digest;

use super::api::Api;

fn uid(object: &Value) -> &str {
    object["metadata"]["uid"].as_str().unwrap_or("")
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

fn namespace(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or("")
}

/// The uid of `object`'s controller, if it has one.
fn controller(object: &Value) -> Option<&str> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true)?["uid"]
        .as_str()
}

fn owner(kind: &str, object: &Value) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name(object), "uid": uid(object),
            "controller": true, "blockOwnerDeletion": true}])
}

/// One round of every controller.
pub fn reconcile(api: &Api, next: &mut u64) {
    deployments(api);
    replica_sets(api, next);
    collect_garbage(api);
}

fn deployments(api: &Api) {
    let replica_sets = api.all("replicasets");
    for d in api.all("deployments") {
        let template = &d["spec"]["template"];
        let hash: String = sha2::Sha256::digest(template.to_string().as_bytes())
            .iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect();
        let rs_name = format!("{}-{hash}", name(&d));
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        let ns = namespace(&d);
        let owned: Vec<&Value> = replica_sets
            .iter()
            .filter(|rs| controller(rs) == Some(uid(&d)))
            .collect();
        if !owned.iter().any(|rs| name(rs) == rs_name) {
            let mut template = template.clone();
            template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns,
                             "labels": template["metadata"]["labels"].clone(),
                             "ownerReferences": owner("Deployment", &d)},
                "spec": {"replicas": replicas, "selector": selector, "template": template},
            });
            let _ = api.create_object("replicasets", ns, rs);
        }
        for rs in owned {
            let want = if name(rs) == rs_name { replicas } else { 0 };
            if rs["spec"]["replicas"].as_u64() != Some(want) {
                let key = ("replicasets".to_owned(), ns.to_owned(), name(rs).to_owned());
                api.update(&key, |r| r["spec"]["replicas"] = json!(want));
            }
        }
    }
}

fn replica_sets(api: &Api, next: &mut u64) {
    let pods = api.all("pods");
    for rs in api.all("replicasets") {
        let ns = namespace(&rs);
        let mut owned: Vec<&Value> = pods
            .iter()
            .filter(|p| {
                controller(p) == Some(uid(&rs)) && p["metadata"]["deletionTimestamp"].is_null()
            })
            .collect();
        let want = rs["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        while owned.len() > want {
            if let Some(pod) = owned.pop() {
                api.delete_object("pods", ns, name(pod));
            }
        }
        for _ in owned.len()..want {
            *next += 1;
            let template = &rs["spec"]["template"];
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{}-{:05x}", name(&rs), *next), "namespace": ns,
                             "labels": template["metadata"]["labels"].clone(),
                             "ownerReferences": owner("ReplicaSet", &rs)},
                "spec": template["spec"].clone(),
            });
            let _ = api.create_object("pods", ns, pod);
        }
    }
}

/// Replica sets and pods whose controller is gone.
fn collect_garbage(api: &Api) {
    let deployments: Vec<String> = api
        .all("deployments")
        .iter()
        .map(|d| uid(d).to_owned())
        .collect();
    for rs in api.all("replicasets") {
        if controller(&rs).is_some_and(|u| !deployments.iter().any(|d| d == u)) {
            api.delete_object("replicasets", namespace(&rs), name(&rs));
        }
    }
    let sets: Vec<String> = api
        .all("replicasets")
        .iter()
        .map(|r| uid(r).to_owned())
        .collect();
    for pod in api.all("pods") {
        let owned_by_set = pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet";
        if owned_by_set
            && pod["metadata"]["deletionTimestamp"].is_null()
            && controller(&pod).is_some_and(|u| !sets.iter().any(|s| s == u))
        {
            api.delete_object("pods", namespace(&pod), name(&pod));
        }
    }
}
