//! `sessionfs k8s manifests`: `deploy/kubernetes/sessionfs.yaml` (namespace, the bridge's
//! ServiceAccount, Role and RoleBinding, the operators' Role, the DaemonSet running `sessionfs
//! mount` on every node) for another namespace or image.

use super::KubeError;

/// The manifests as shipped: namespace `sessionfs`, image `sessionfs:latest`.
pub const SHIPPED: &str = include_str!("../../kubernetes/sessionfs.yaml");

/// The shipped manifests (`deploy/kubernetes/sessionfs.yaml`) with `namespace` and `image` in place
/// of the defaults.
pub fn manifests(namespace: &str, image: &str) -> Result<String, KubeError> {
    if sessionfs_registry::check_host_name(namespace).is_err() {
        return Err(KubeError::InvalidOption(format!(
            "namespace {namespace:?} is not a DNS label (1-63 characters a-z, 0-9 and '-')"
        )));
    }
    crate::image::check_reference(image).map_err(|e| KubeError::InvalidOption(e.to_string()))?;
    let mut out = String::with_capacity(SHIPPED.len());
    let mut in_namespace_object = false;
    for line in SHIPPED.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if line == "kind: Namespace" {
            in_namespace_object = true;
        } else if line == "---" {
            in_namespace_object = false;
        }
        let replaced = match trimmed {
            "namespace: sessionfs" => format!("{indent}namespace: {namespace}"),
            "name: sessionfs" if in_namespace_object => format!("{indent}name: {namespace}"),
            "image: sessionfs:latest" => format!("{indent}image: {image}"),
            _ => line.to_owned(),
        };
        out.push_str(&replaced);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_and_image_are_replaced_everywhere_and_only_there() {
        let out = manifests("team-a", "registry.example/sessionfs:1.2").unwrap();
        assert!(!out.contains("namespace: sessionfs\n"), "{out}");
        assert_eq!(
            out.matches("namespace: team-a\n").count(),
            SHIPPED.matches("namespace: sessionfs\n").count()
        );
        assert!(out.contains("  name: team-a\n"));
        assert!(out.contains("image: registry.example/sessionfs:1.2\n"));
        assert!(out.contains("name: sessionfs-bridge\n"));
        assert_eq!(manifests("sessionfs", "sessionfs:latest").unwrap(), SHIPPED);
        assert!(manifests("Team_A", "i").is_err());
    }
}
